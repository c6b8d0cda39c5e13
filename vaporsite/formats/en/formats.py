"""English: times to the second with the time zone, dates year first ("2026-12-02 16:14:08 UTC").

An operator reads event logs and compares them with the host's journal: minutes are too coarse,
and a time without its zone is a guess. Used for every language variant of English (en-us, en-gb)."""

DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s T"
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
