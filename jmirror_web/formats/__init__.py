"""Date and time formats of every page (FORMAT_MODULE_PATH): Django's admin shows a
datetime by these, so it writes times as the console does, UTC and ISO-ordered
(2026-12-06 17:04:05 UTC), not "Dec. 6, 2026, 5:04 p.m."."""
