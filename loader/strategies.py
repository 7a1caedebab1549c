"""The import strategies of the contract (MAPPING.md C14, 6.3) and what each one reads.

This is the one place that knows, per strategy, which source collections and fields a table
needs beyond its own column mappings: the extract stage projects them, the transform stage
selects the SQL that uses them. A table without `import_strategy` is a plain entity table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Sync kinds of MAPPING.md C14.
UPSERT_ID = "upsert_id"
UPSERT_KEY = "upsert_key"
DELETE_INSERT = "delete_insert"
MOMENTS = "moments"


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str
    # Extra (collection -> fields) read besides the table's own collection and mapped fields.
    extra_sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Array fields of the table's own collection (relationship strategies).
    array_fields: tuple[str, ...] = ()
    # SQL file under loader/transform/sql/ that selects the table's raw column values;
    # None means the strategy is not implemented yet.
    sql: str | None = None


# Event documents carry their sub-type in `__t`, else `kind` (MAPPING.md C9).
DISCRIMINATOR_FIELDS = ("__t", "kind")

# Tables without `import_strategy`: entity tables (include_base) are upserted by id, the
# others by their first unique constraint with the "latest timestamps" merge (MAPPING.md 5.5).
ENTITY = Strategy("entity", UPSERT_ID, sql="entity.sql")
KEYED = Strategy("keyed", UPSERT_KEY)

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "menus",
            UPSERT_ID,
            # Menu events are selected by their discriminator (C9); a legacy `menus`
            # collection is read too when it exists (MAPPING.md 3.13).
            extra_sources={"events": DISCRIMINATOR_FIELDS, "menus": ("name",)},
            sql="menus.sql",
        ),
        Strategy(
            "appointments",
            UPSERT_ID,
            # A missing `user` falls back to the coaching's user (MAPPING.md 3.24).
            extra_sources={"coachings": ("user",)},
            sql="appointments.sql",
        ),
        Strategy("user_events", DELETE_INSERT, array_fields=("registered_events",)),
        Strategy(
            "users_targets",
            DELETE_INSERT,
            array_fields=("targets", "specificity_targets", "health_targets"),
        ),
        Strategy("quizzs_links_questions", DELETE_INSERT, array_fields=("questions",)),
        Strategy("users_quizzs_links_questions", DELETE_INSERT, array_fields=("questions",)),
        Strategy("users_contents_reads", DELETE_INSERT, array_fields=("viewed_by",)),
        Strategy("days_contents_links", DELETE_INSERT, array_fields=("contents",)),
        Strategy("days_logbooks_links", DELETE_INSERT, array_fields=("main_logbooks",)),
        Strategy("users_logbook", UPSERT_KEY, extra_sources={"coachinglogbooks": ("user", "day")}),
        Strategy(
            "users_logbooks_moments",
            MOMENTS,
            extra_sources={
                "userquizzs": ("type", "name", "questions"),
                "coachinglogbooks": ("user", "day", "logbook"),
                "userquizzquestions": (
                    "quizz_question",
                    "quizzQuestion",
                    "boolean_answer",
                    "scale_1_10_answer",
                    "text_answer",
                    "document_answer",
                    "numeric_answer",
                    "single_enum_answer",
                    "qcm_answers",
                ),
                "quizzquestions": ("title",),
                "items": ("text", "userQuizzQuestion"),
            },
        ),
        Strategy("users_logbooks_moments_details", MOMENTS),
    )
}


def strategy_for(import_strategy: str | None, include_base: bool) -> Strategy:
    if import_strategy is not None:
        return STRATEGIES[import_strategy]
    return ENTITY if include_base else KEYED
