"""The import strategies of the contract (MAPPING.md C14, 6.3) and what each one reads.

This is the one place that knows, per strategy, which source collections and fields a table
needs beyond its own column mappings (the extract stage projects them), which SQL derives its
rows (the transform stage), and which keys a run replaces (the load stage). A table without
`import_strategy` is a plain entity table, or a keyed table merged on its first unique constraint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Sync kinds of MAPPING.md C14.
UPSERT_ID = "upsert_id"
UPSERT_KEY = "upsert_key"
DELETE_INSERT = "delete_insert"
MOMENTS = "moments"


@dataclass(frozen=True)
class ArrayField:
    """One array of a relationship strategy: its field, the C5 key of embedded elements, and
    constant columns of the rows it gives (users_targets.type)."""

    name: str
    key: str
    constants: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str
    # SQL file under loader/transform/sql/ that selects the table's documents (see entity.sql).
    sql: str
    # Extra (collection -> fields) read besides the table's own collection and mapped fields.
    extra_sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Relationship strategies: the arrays of the parent document, the column holding the
    # parent id, the column holding the element, and whether the element's `date` is the
    # row's creation time (user_events).
    arrays: tuple[ArrayField, ...] = ()
    parent_column: str | None = None
    element_column: str | None = None
    element_date: bool = False
    # SQL file creating temporary tables shared by several tables (run once per transform).
    prepare: str | None = None
    # Units: the source documents whose records are derived and replaced together (the
    # `_source_id` of the records, or their `_unit` column when the SQL gives one). `select` is
    # the SQL file choosing the units an incremental run re-derives from the changed documents
    # (loader/transform/sql/select_*.sql); the unit documents of the table's sources are
    # restricted to those, the `lookups` collections are read whole.
    select: str = "select_changed.sql"
    lookups: tuple[str, ...] = ()
    # Collections whose documents' 24-hex tokens the select SQL reads as {references_<collection>}
    # (_unit: the document, ref): kept in staging/derived/_references/<collection>/ and brought up
    # to date with the changed documents, rather than found again in every document each run.
    references: tuple[str, ...] = ()
    # Query of every unit of a full run (counted as the table's source documents).
    units_sql: str = "SELECT _id FROM {src}"
    # The column of the table holding the unit's key when it is not the row's identity
    # (indexed: C13).
    unit_column: str | None = None
    # The records are a view of the staged documents rather than a table: for a plain projection
    # of them, materializing would hold the whole collection (and large documents in vectors of
    # 2,048) in DuckDB's memory, while the staged parts are read in bounded row groups.
    streamed: bool = False

    @property
    def array_fields(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays)

    def columns(self) -> set[str]:
        """Columns the strategy writes by name (the table must have them)."""
        named = {self.parent_column, self.element_column, self.unit_column}
        named.update(c for a in self.arrays for c in a.constants)
        return {c for c in named if c is not None}


# Event documents carry their sub-type in `__t`, else `kind` (MAPPING.md C9).
DISCRIMINATOR_FIELDS = ("__t", "kind")

# Tables without `import_strategy`: entity tables (include_base) are upserted by id, the
# others by their first unique constraint with the "latest timestamps" merge (MAPPING.md 5.5).
ENTITY = Strategy("entity", UPSERT_ID, sql="entity.sql", streamed=True)
KEYED = Strategy("keyed", UPSERT_KEY, sql="entity.sql", streamed=True)


def _relationship(name: str, parent_column: str, element_column: str, *arrays: ArrayField, element_date: bool = False) -> Strategy:
    """DELETE-INSERT per parent document (MAPPING.md 5.6): a parent document is the unit, so that
    an emptied array removes the parent's rows."""
    return Strategy(
        name,
        DELETE_INSERT,
        sql="relationship.sql",
        arrays=arrays,
        parent_column=parent_column,
        element_column=element_column,
        element_date=element_date,
        unit_column=parent_column,
    )


# The moments pass (MAPPING.md section 4) derives both tables at once; they are written together.
_MOMENT_SOURCES = {
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
}
_MOMENT_UNITS = dict(
    select="select_moments.sql",
    lookups=tuple(c for c in _MOMENT_SOURCES if c != "userquizzs"),
    references=("userquizzquestions", "userquizzs"),
    units_sql="SELECT id AS _id FROM moment_candidates",
)

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "menus",
            UPSERT_ID,
            sql="menus.sql",
            # Menu events are selected by their discriminator (C9); a legacy `menus`
            # collection is read too when it exists (MAPPING.md 3.13).
            extra_sources={"events": DISCRIMINATOR_FIELDS, "menus": ("name",)},
        ),
        Strategy(
            "appointments",
            UPSERT_ID,
            sql="appointments.sql",
            # A missing `user` falls back to the coaching's user (MAPPING.md 3.24).
            extra_sources={"coachings": ("user",)},
            # ... so the appointments of a coaching are re-derived together (5.3).
            select="select_appointments.sql",
            lookups=("coachings",),
        ),
        _relationship("user_events", "user_id", "event_id", ArrayField("registered_events", "event"), element_date=True),
        _relationship(
            "users_targets",
            "user_id",
            "target_id",
            ArrayField("targets", "_id", {"type": "basic"}),
            ArrayField("specificity_targets", "_id", {"type": "specificity"}),
            ArrayField("health_targets", "_id", {"type": "health"}),
        ),
        _relationship("quizzs_links_questions", "quizz_id", "question_id", ArrayField("questions", "question")),
        _relationship(
            "users_quizzs_links_questions", "user_quizz_id", "user_quizz_question_id", ArrayField("questions", "question")
        ),
        _relationship("users_contents_reads", "content_id", "user_id", ArrayField("viewed_by", "user")),
        _relationship("days_contents_links", "day_id", "content_id", ArrayField("contents", "content")),
        _relationship("days_logbooks_links", "day_id", "logbook_id", ArrayField("main_logbooks", "logbook")),
        # One row per (user, local day) of the coaching logbooks (MAPPING.md 3.20).
        Strategy("users_logbook", UPSERT_KEY, sql="users_logbook.sql"),
        # `menurecipes` plus a legacy `menu_recipes` collection (MAPPING.md 3.21).
        Strategy("menu_recipes", UPSERT_KEY, sql="menu_recipes.sql", extra_sources={"menu_recipes": ("menu", "recipe")}),
        Strategy(
            "users_logbooks_moments",
            MOMENTS,
            sql="moments.sql",
            extra_sources=_MOMENT_SOURCES,
            prepare="moments_pass.sql",
            **_MOMENT_UNITS,
        ),
        Strategy(
            "users_logbooks_moments_details",
            MOMENTS,
            sql="moment_details.sql",
            extra_sources=_MOMENT_SOURCES,
            prepare="moments_pass.sql",
            unit_column="user_logbook_moment_id",
            **_MOMENT_UNITS,
        ),
    )
}


def strategy_for(import_strategy: str | None, include_base: bool) -> Strategy:
    if import_strategy is not None:
        return STRATEGIES[import_strategy]
    return ENTITY if include_base else KEYED
