from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def audit_key_file(settings: Any, tmp_path: Path) -> Path:
    """Each test its own checkpoint signing key, made on first use."""
    path = tmp_path / "audit_signing_key"
    settings.JMIRROR_AUDIT_KEY_FILE = path
    return path
