"""Reason codes of the issue log (MAPPING.md C10, 4.8) and the kind of record each one is."""

from __future__ import annotations

REJECT, WARNING, SKIP = "reject", "warning", "skip"

# A skipped record gives no row by design (MAPPING.md 3.20, 4.6); counted, not an error.
SKIP_REASONS = ("no_user", "no_questions", "no_answers", "no_coachinglogbook", "no_user_or_day", "no_users_logbook_match")

# A warning leaves the row in (or drops one array element / duplicate); reasons ending in ':'
# are followed by a column name.
WARNING_REASONS = (
    "bad_reference",
    "fk_nulled:",
    "duplicate_in_source",
    "question_missing",
    "template_missing",
    "answer_item_missing",
    "detail_moved",
)


def kind_sql(reason: str) -> str:
    """SQL giving the kind ('reject', 'warning' or 'skip') of the reason held by `reason`."""
    skips = ", ".join(f"'{r}'" for r in SKIP_REASONS)
    warnings = " OR ".join(f"starts_with({reason}, '{r}')" for r in WARNING_REASONS)
    return f"CASE WHEN {reason} IN ({skips}) THEN '{SKIP}' WHEN {warnings} THEN '{WARNING}' ELSE '{REJECT}' END"
