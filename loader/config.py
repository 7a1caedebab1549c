"""schemas.yaml -> validated table model, and the load order derived from foreign keys.

The file format is the one of the original tool (MAPPING.md 6.3): every original key is
accepted unchanged. Extensions (all optional, documented in the README):
  * table key `fallbacks: {column: [mongo_field, ...]}`: fields read, in order, when the
    mapped field is missing or null (e.g. users.birthdate: birthday, else birthdate);
  * column key `reference: true`: the column holds a reference (normalised as MAPPING.md C5)
    even though it has no foreign key.
Any error stops the program before any I/O, with a message naming the table and the key.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loader.strategies import DELETE_INSERT, KEYED, MOMENTS, STRATEGIES, Strategy, strategy_for


class ConfigError(Exception):
    """The mapping file is invalid; the message names the file, the table and the key."""


_FOREIGN_KEY = re.compile(r"^\s*(?P<table>\w+)\s*\(\s*(?P<column>\w+)\s*\)\s*$")
# A verbatim SQL type: words, optionally with a length/precision, e.g. VARCHAR(255), NUMERIC(10, 2).
_SQL_TYPE = re.compile(r"^[A-Za-z][A-Za-z ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?$")


# ---------------------------------------------------------------- file format (as written)


class _ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    sql_type: str
    nullable: bool = True
    primary_key: bool = False
    foreign_key: str | None = None
    reference: bool = False  # extension


class _TableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_base: bool = False
    additional_columns: list[_ColumnSpec] = Field(default_factory=list)
    additional_mappings: dict[str, str] = Field(default_factory=dict)
    columns: list[_ColumnSpec] = Field(default_factory=list)
    explicit_mappings: dict[str, str] | None = None
    unique_constraints: list[list[str]] | None = None
    name: str | None = None
    mongo_collection: str | None = None
    export_order: int = 0
    import_strategy: str | None = None
    force_reimport: bool = False
    truncate_before_import: bool = False
    date_threshold: date | None = None  # R3 addition (MAPPING.md 7.4); accepted, not used yet
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)  # extension


_BASE_COLUMNS = (
    _ColumnSpec(name="id", sql_type="VARCHAR", nullable=False, primary_key=True),
    _ColumnSpec(name="created_at", sql_type="TIMESTAMP", nullable=False),
    _ColumnSpec(name="updated_at", sql_type="TIMESTAMP", nullable=False),
)
_BASE_MAPPINGS = {"_id": "id", "creation_date": "created_at", "update_date": "updated_at"}


# ---------------------------------------------------------------- resolved model


@dataclass(frozen=True)
class ForeignKey:
    table: str
    column: str


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    nullable: bool
    primary_key: bool
    foreign_key: ForeignKey | None
    reference: bool
    # Mongo fields read for this column, in order of preference (C3 plus fallbacks).
    sources: tuple[str, ...]

    @property
    def base_type(self) -> str:
        """The type name without length, upper-case: VARCHAR(255) -> VARCHAR."""
        return self.sql_type.split("(")[0].strip().upper()

    @property
    def length(self) -> int | None:
        match = re.search(r"\(\s*(\d+)", self.sql_type)
        return int(match.group(1)) if match else None

    @property
    def is_reference(self) -> bool:
        return self.foreign_key is not None or self.reference


@dataclass(frozen=True)
class Table:
    key: str
    name: str
    collection: str
    columns: tuple[Column, ...]
    strategy: Strategy
    export_order: int
    position: int
    unique_constraints: tuple[tuple[str, ...], ...]
    include_base: bool
    force_reimport: bool
    truncate_before_import: bool

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def primary_key(self) -> str | None:
        return next((c.name for c in self.columns if c.primary_key), None)

    @property
    def foreign_keys(self) -> list[Column]:
        return [c for c in self.columns if c.foreign_key is not None]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def sources(self) -> dict[str, set[str]]:
        """Collection -> top-level fields this table reads (the extract projection)."""
        needed: dict[str, set[str]] = {
            self.collection: {"_id", "creation_date", "update_date"}
        }
        # Relationship and moments tables derive their columns from arrays and joins,
        # not from same-named fields (C3 applies to the others).
        if self.strategy.kind not in (DELETE_INSERT, MOMENTS):
            for column in self.columns:
                needed[self.collection].update(column.sources)
        needed[self.collection].update(self.strategy.array_fields)
        for collection, fields in self.strategy.extra_sources.items():
            needed.setdefault(collection, {"_id", "creation_date", "update_date"}).update(fields)
        return needed


@dataclass(frozen=True)
class Config:
    path: Path
    tables: dict[str, Table]  # by physical name, in file order
    load_order: tuple[str, ...]

    def ordered(self, only: list[str] | None = None) -> list[Table]:
        """Tables in load order, optionally restricted to `only` (names checked)."""
        if only:
            unknown = sorted(set(only) - set(self.tables))
            if unknown:
                raise ConfigError(f"unknown table(s): {', '.join(unknown)}")
        return [self.tables[n] for n in self.load_order if not only or n in only]

    def collections(self, tables: list[Table] | None = None) -> dict[str, set[str]]:
        """Every source collection the given tables (default: all) read, with its fields."""
        needed: dict[str, set[str]] = {}
        for table in tables if tables is not None else self.ordered():
            for collection, fields in table.sources().items():
                needed.setdefault(collection, set()).update(fields)
        return needed


# ---------------------------------------------------------------- loading


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of tables")
    # A file without `tables:` is read as the table mapping itself (MAPPING.md 6.3).
    raw_tables = document.get("tables", document)
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise ConfigError(f"{path}: `tables` must be a non-empty mapping")

    tables: dict[str, Table] = {}
    for position, (key, raw) in enumerate(raw_tables.items()):
        table = _resolve_table(path, str(key), raw, position)
        if table.name in tables:
            raise ConfigError(f"{path}: table '{key}': name '{table.name}' is used twice")
        tables[table.name] = table
    _check_foreign_keys(path, tables)
    return Config(path=path, tables=tables, load_order=_load_order(path, tables))


def _resolve_table(path: Path, key: str, raw: object, position: int) -> Table:
    where = f"{path}: table '{key}'"
    try:
        spec = _TableSpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from None

    if spec.import_strategy is not None and spec.import_strategy not in STRATEGIES:
        raise ConfigError(
            f"{where}, key 'import_strategy': unknown strategy '{spec.import_strategy}'"
            f" (known: {', '.join(sorted(STRATEGIES))})"
        )
    if spec.include_base:
        specs = [*_BASE_COLUMNS, *spec.additional_columns]
        mappings = {**_BASE_MAPPINGS, **spec.additional_mappings}
        mapping_key = "additional_mappings"
    else:
        specs = list(spec.columns)
        mappings = {"_id": "id", **(spec.explicit_mappings or {})}
        mapping_key = "explicit_mappings"
    if not specs:
        raise ConfigError(f"{where}: no columns")

    names = [c.name for c in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: column(s) defined twice: {', '.join(duplicates)}")
    for column in specs:
        if not _SQL_TYPE.match(column.sql_type):
            raise ConfigError(
                f"{where}, column '{column.name}', key 'sql_type': not a SQL type: {column.sql_type!r}"
            )

    field_of: dict[str, str] = {}
    for mongo_field, column_name in mappings.items():
        if column_name not in names:
            if mongo_field == "_id":  # the implicit id mapping of tables without an id column
                continue
            raise ConfigError(f"{where}, key '{mapping_key}': '{mongo_field}' maps to unknown column '{column_name}'")
        if column_name in field_of and mongo_field not in _BASE_MAPPINGS:
            raise ConfigError(f"{where}, key '{mapping_key}': column '{column_name}' is mapped twice")
        field_of[column_name] = mongo_field
    for column_name in spec.fallbacks:
        if column_name not in names:
            raise ConfigError(f"{where}, key 'fallbacks': unknown column '{column_name}'")

    columns = tuple(
        Column(
            name=c.name,
            sql_type=c.sql_type,
            nullable=c.nullable and not c.primary_key,
            primary_key=c.primary_key,
            foreign_key=_parse_foreign_key(where, c),
            reference=c.reference,
            sources=(field_of.get(c.name, c.name), *spec.fallbacks.get(c.name, ())),
        )
        for c in specs
    )
    unique = tuple(tuple(u) for u in spec.unique_constraints or ())
    for constraint in unique:
        missing = [c for c in constraint if c not in names]
        if missing or not constraint:
            raise ConfigError(f"{where}, key 'unique_constraints': unknown column(s) {missing or constraint}")

    strategy = strategy_for(spec.import_strategy, spec.include_base)
    if strategy is KEYED and not unique:
        raise ConfigError(f"{where}: a table without include_base or import_strategy needs unique_constraints (its upsert key)")
    return Table(
        key=key,
        name=spec.name or key,
        collection=spec.mongo_collection or key,
        columns=columns,
        strategy=strategy,
        export_order=spec.export_order,
        position=position,
        unique_constraints=unique,
        include_base=spec.include_base,
        force_reimport=spec.force_reimport,
        truncate_before_import=spec.truncate_before_import,
    )


def _parse_foreign_key(where: str, column: _ColumnSpec) -> ForeignKey | None:
    if column.foreign_key is None:
        return None
    match = _FOREIGN_KEY.match(column.foreign_key)
    if not match:
        raise ConfigError(
            f"{where}, column '{column.name}', key 'foreign_key': expected 'table(column)', got {column.foreign_key!r}"
        )
    return ForeignKey(table=match["table"], column=match["column"])


def _check_foreign_keys(path: Path, tables: dict[str, Table]) -> None:
    for table in tables.values():
        for column in table.foreign_keys:
            fk = column.foreign_key
            where = f"{path}: table '{table.key}', column '{column.name}', key 'foreign_key'"
            if fk.table not in tables:
                raise ConfigError(f"{where}: unknown table '{fk.table}'")
            if fk.column not in tables[fk.table].column_names:
                raise ConfigError(f"{where}: table '{fk.table}' has no column '{fk.column}'")


def _load_order(path: Path, tables: dict[str, Table]) -> tuple[str, ...]:
    """Parents before children (foreign keys); ties broken by export_order, then file order."""
    parents = {
        name: {c.foreign_key.table for c in t.foreign_keys if c.foreign_key.table != name}
        for name, t in tables.items()
    }
    children: dict[str, list[str]] = {name: [] for name in tables}
    for name, ps in parents.items():
        for parent in ps:
            children[parent].append(name)
    waiting = {name: len(ps) for name, ps in parents.items()}
    ready = [(t.export_order, t.position, name) for name, t in tables.items() if not waiting[name]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        *_, name = heapq.heappop(ready)
        order.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if not waiting[child]:
                heapq.heappush(ready, (tables[child].export_order, tables[child].position, child))
    if len(order) < len(tables):
        cycle = sorted(set(tables) - set(order))
        raise ConfigError(f"{path}: foreign-key cycle among tables: {', '.join(cycle)}")
    return tuple(order)


def _describe(exc: ValidationError) -> str:
    """One line per pydantic error: `key 'additional_columns[2].nulable': unknown key`."""
    parts = []
    for error in exc.errors():
        location = ""
        for item in error["loc"]:
            location += f"[{item}]" if isinstance(item, int) else (f".{item}" if location else str(item))
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"key '{location}': {message}" if location else message)
    return "; ".join(parts)
