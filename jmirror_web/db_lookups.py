"""``in`` on integer fields, without the values no column can hold.

Django (5.2) answers ``filter(pk=2**64)`` with no rows, as a value past the column's
range matches nothing, but ``filter(pk__in=[2**64])`` reaches the database driver, and
SQLite's raises OverflowError: a 500 wherever a submitted id list is checked (the
admin's many-to-many fields such as an intercept's routers or a user's groups,
``ModelMultipleChoiceField``). This lookup leaves such values out before the query is
built (an empty list matches nothing, as before). Registered for every IntegerField
(primary keys included) by :class:`jmirror_web.intercepts.apps.InterceptsConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.models import IntegerField
from django.db.models.lookups import In

if TYPE_CHECKING:
    InBase = In[Any]
else:
    InBase = In  # generic in the type stubs only


@IntegerField.register_lookup
class IntegerFieldIn(InBase):
    lookup_name = "in"

    def process_rhs(self, compiler: Any, connection: Any) -> Any:
        if self.rhs_is_direct_value():
            try:
                low, high = connection.ops.integer_field_range(
                    self.lhs.output_field.get_internal_type()
                )
            except KeyError:  # a type the backend gives no range for: left as it is
                low = high = None
            self.rhs = [
                value
                for value in self.rhs
                if not isinstance(value, int)
                or ((low is None or value >= low) and (high is None or value <= high))
            ]
        return super().process_rhs(compiler, connection)
