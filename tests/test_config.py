"""Unit tests of loader.config: the mapping file (MAPPING.md 6.3 plus the loader's extensions),
the resolved table model, the load order and the start-up errors."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import yaml

from loader.config import ConfigError, ForeignKey, load_config

ROOT = Path(__file__).resolve().parents[1]
PROJECT_MAPPING = ROOT / "config" / "schemas.yaml"
SEED_MAPPING = Path("/work/shared/reference/seed_schemas.yaml")
REAL_MAPPINGS = [
    pytest.param(PROJECT_MAPPING, id="project"),
    pytest.param(SEED_MAPPING, id="seed"),
]

ORDER_1_TABLES = [
    "ingredients", "appointment_types", "companies", "offers", "categories",
    "targets", "recipes", "quizzs", "quizzs_questions", "contents",
]


# --------------------------------------------------------------------------- helpers


def write(tmp_path: Path, content: dict | str, name: str = "schemas.yaml") -> Path:
    """Write a mapping (a dict, dumped in insertion order, or raw YAML text) to tmp_path."""
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, content: dict | str):
    return load_config(write(tmp_path, content))


def error(tmp_path: Path, content: dict | str, *words: str) -> str:
    """The ConfigError message of loading `content`; it names the file and every word given."""
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def entity(*columns: dict, **keys) -> dict:
    """An include_base table with the given additional columns."""
    return {"include_base": True, "additional_columns": list(columns), **keys}


def col(name: str, sql_type: str = "VARCHAR", **keys) -> dict:
    return {"name": name, "sql_type": sql_type, **keys}


def link(*columns: dict, **keys) -> dict:
    """An include_base: false table with a unique constraint on its first column."""
    return {"columns": list(columns), "unique_constraints": [[columns[0]["name"]]], **keys}


# --------------------------------------------------------------------------- real mappings


@cache
def real(path: Path):
    """Each real mapping is parsed once per session (tests only read the model)."""
    return load_config(path)


@pytest.fixture
def project():
    return real(PROJECT_MAPPING)


@pytest.mark.parametrize("path", REAL_MAPPINGS)
def test_real_mapping_loads_32_tables(path):
    config = real(path)
    assert len(config.tables) == 32
    assert sorted(config.load_order) == sorted(config.tables)


@pytest.mark.parametrize("path", REAL_MAPPINGS)
def test_real_mapping_load_order_puts_every_table_after_its_parents(path):
    config = real(path)
    rank = {name: i for i, name in enumerate(config.load_order)}
    for table in config.tables.values():
        for column in table.foreign_keys:
            parent = column.foreign_key.table
            assert parent == table.name or rank[parent] < rank[table.name], (table.name, column.name)


@pytest.mark.parametrize("path", REAL_MAPPINGS)
def test_real_mapping_load_order_keeps_export_order_then_file_order(path):
    config = real(path)
    ordered = config.ordered()
    assert [t.name for t in ordered[:10]] == ORDER_1_TABLES
    assert [t.export_order for t in ordered] == sorted(t.export_order for t in ordered)
    assert config.load_order[-2:] == ("days_contents_links", "days_logbooks_links")


def test_file_without_tables_key_is_read_as_the_table_mapping(tmp_path):
    document = yaml.safe_load(SEED_MAPPING.read_text(encoding="utf-8"))
    bare = load(tmp_path, document["tables"])
    wrapped = real(SEED_MAPPING)
    assert bare.load_order == wrapped.load_order
    assert bare.tables["users"].columns == wrapped.tables["users"].columns


def test_project_mapping_is_the_seed_plus_extensions(project):
    seed = real(SEED_MAPPING)
    assert seed.load_order == project.load_order
    assert seed.tables["users"].column("birthdate").sources == ("birthday",)
    assert project.tables["users"].column("birthdate").sources == ("birthday", "birthdate")
    assert not seed.tables["items"].column("updated_by").is_reference
    assert project.tables["items"].column("updated_by").is_reference


# --------------------------------------------------------------------------- load order


def test_load_order_ties_keep_export_order_then_file_order(tmp_path):
    config = load(tmp_path, {"c": entity(export_order=2), "a": entity(export_order=1),
                             "b": entity(export_order=2), "d": entity()})
    assert config.load_order == ("d", "a", "c", "b")


def test_load_order_puts_child_after_parent_despite_lower_export_order(tmp_path):
    config = load(tmp_path, {
        "child": entity(col("parent_id", foreign_key="parent(id)"), export_order=1),
        "other": entity(export_order=1),
        "parent": entity(export_order=5),
    })
    assert config.load_order == ("other", "parent", "child")


def test_self_reference_is_not_a_cycle(tmp_path):
    config = load(tmp_path, {"nodes": entity(col("parent_id", foreign_key="nodes(id)"))})
    assert config.load_order == ("nodes",)
    assert config.tables["nodes"].column("parent_id").foreign_key == ForeignKey("nodes", "id")


def test_ordered_returns_requested_tables_in_load_order(project):
    assert [t.name for t in project.ordered(["users", "companies"])] == ["companies", "users"]


def test_ordered_without_names_returns_every_table(project):
    assert [t.name for t in project.ordered()] == list(project.load_order)


def test_ordered_unknown_name_raises_naming_it(project):
    with pytest.raises(ConfigError, match="usres"):
        project.ordered(["users", "usres"])


# --------------------------------------------------------------------------- resolved model


def test_include_base_prepends_id_created_at_updated_at(tmp_path):
    table = load(tmp_path, {"things": entity(col("label", "TEXT"))}).tables["things"]
    assert table.column_names == ["id", "created_at", "updated_at", "label"]
    facts = [(c.sql_type, c.nullable, c.primary_key, c.sources) for c in table.columns[:3]]
    assert facts == [
        ("VARCHAR", False, True, ("_id",)),
        ("TIMESTAMP", False, False, ("creation_date",)),
        ("TIMESTAMP", False, False, ("update_date",)),
    ]
    assert table.primary_key == "id"
    assert table.include_base


def test_column_defaults_are_nullable_without_key(tmp_path):
    column = load(tmp_path, {"things": entity(col("label"))}).tables["things"].column("label")
    assert column.nullable and not column.primary_key
    assert column.foreign_key is None and not column.is_reference


def test_primary_key_column_is_never_nullable(tmp_path):
    table = load(tmp_path, {"t": link(col("code", primary_key=True))}).tables["t"]
    assert table.primary_key == "code"
    assert not table.column("code").nullable


def test_column_reads_same_named_field_without_mapping(tmp_path):
    table = load(tmp_path, {"things": entity(col("label"))}).tables["things"]
    assert table.column("label").sources == ("label",)


def test_additional_mapping_sets_column_source(tmp_path):
    table = load(tmp_path, {"things": entity(col("owner_id"), additional_mappings={"owner": "owner_id"})})
    assert table.tables["things"].column("owner_id").sources == ("owner",)


def test_explicit_mapping_sets_column_source(tmp_path):
    table = load(tmp_path, {"links": link(
        col("thing_id"), col("created_at", "TIMESTAMP"),
        explicit_mappings={"thing": "thing_id", "creation_date": "created_at"},
    )}).tables["links"]
    assert table.column("thing_id").sources == ("thing",)
    assert table.column("created_at").sources == ("creation_date",)
    assert not table.include_base


def test_id_column_of_table_without_base_reads__id(tmp_path):
    table = load(tmp_path, {"t": link(col("code"), col("id", primary_key=True))}).tables["t"]
    assert table.column("id").sources == ("_id",)


def test_fallbacks_append_fields_to_sources(tmp_path):
    table = load(tmp_path, {"users": entity(
        col("birthdate", "DATE"), col("kind"),
        additional_mappings={"birthday": "birthdate"},
        fallbacks={"birthdate": ["birthdate", "dob"], "kind": ["type"]},
    )}).tables["users"]
    assert table.column("birthdate").sources == ("birthday", "birthdate", "dob")
    assert table.column("kind").sources == ("kind", "type")


def test_reference_true_makes_column_a_reference(tmp_path):
    column = load(tmp_path, {"t": entity(col("ref", reference=True))}).tables["t"].column("ref")
    assert column.reference and column.is_reference and column.foreign_key is None


def test_foreign_key_makes_column_a_reference(tmp_path):
    config = load(tmp_path, {"a": entity(), "b": entity(col("a_id", foreign_key=" a ( id ) "))})
    column = config.tables["b"].column("a_id")
    assert column.foreign_key == ForeignKey("a", "id")
    assert column.is_reference and not column.reference
    assert [c.name for c in config.tables["b"].foreign_keys] == ["a_id"]


@pytest.mark.parametrize(
    "sql_type, base_type, length",
    [("VARCHAR(255)", "VARCHAR", 255), ("varchar", "VARCHAR", None),
     ("NUMERIC(10, 2)", "NUMERIC", 10), ("DOUBLE PRECISION", "DOUBLE PRECISION", None)],
)
def test_base_type_and_length(tmp_path, sql_type, base_type, length):
    column = load(tmp_path, {"t": entity(col("x", sql_type))}).tables["t"].column("x")
    assert (column.sql_type, column.base_type, column.length) == (sql_type, base_type, length)


def test_name_and_collection_default_to_the_key(tmp_path):
    table = load(tmp_path, {"things": entity()}).tables["things"]
    assert (table.key, table.name, table.collection, table.export_order) == ("things", "things", "things", 0)
    assert table.strategy.name == "entity"


def test_name_and_mongo_collection_override_the_key(tmp_path):
    config = load(tmp_path, {"things": entity(name="stuff", mongo_collection="thingies")})
    table = config.tables["stuff"]
    assert (table.key, table.name, table.collection) == ("things", "stuff", "thingies")
    assert config.load_order == ("stuff",)


def test_table_flags_and_date_threshold_are_accepted(tmp_path):
    table = load(tmp_path, {"t": entity(force_reimport=True, truncate_before_import=True,
                                        date_threshold="2024-01-01")}).tables["t"]
    assert table.force_reimport and table.truncate_before_import


def test_table_without_base_and_strategy_is_keyed_by_its_unique_constraint(tmp_path):
    table = load(tmp_path, {"t": {"columns": [col("a"), col("b")],
                                  "unique_constraints": [["a", "b"]]}}).tables["t"]
    assert table.strategy.name == "keyed"
    assert table.unique_constraints == (("a", "b"),)
    assert table.primary_key is None


def test_table_sources_project_mapped_fields_and_fallbacks(project):
    fields = project.tables["users"].sources()
    assert set(fields) == {"users"}
    assert {"_id", "creation_date", "update_date", "birthday", "birthdate",
            "company", "firstname", "role"} <= fields["users"]
    assert "company_id" not in fields["users"]


def test_menus_read_events_discriminator_and_menus_collection(project):
    fields = project.tables["menus"].sources()
    assert set(fields) == {"events", "menus"}
    assert {"__t", "kind", "name", "_id"} <= fields["events"]
    assert "name" in fields["menus"]


def test_relationship_table_reads_its_array_not_its_columns(project):
    fields = project.tables["user_events"].sources()
    assert "registered_events" in fields["users"]
    assert "user_id" not in fields["users"] and "event_id" not in fields["users"]


def test_collections_merge_the_fields_of_all_tables(project):
    collections = project.collections()
    assert {"birthday", "birthdate", "registered_events", "targets"} <= collections["users"]
    assert {"__t", "kind"} <= collections["events"]
    assert "menus" in collections and "appointmenttypes" in collections


def test_collections_of_selected_tables_only(project):
    assert set(project.collections(project.ordered(["companies"]))) == {"companies"}


# --------------------------------------------------------------------------- errors


def test_unknown_table_key_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(exprot_order=1)}, "things", "exprot_order", "unknown key")


def test_unknown_column_key_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(col("a"), col("b", nulable=False))}, "things", "nulable")


def test_non_boolean_nullable_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(col("a", nullable="maybe"))}, "things", "nullable")


def test_non_integer_export_order_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(export_order="x")}, "things", "export_order")


def test_table_that_is_not_a_mapping_is_an_error(tmp_path):
    error(tmp_path, {"things": ["id"]}, "things")


def test_foreign_key_to_unknown_table_is_an_error(tmp_path):
    error(tmp_path, {"users": entity(col("company_id", foreign_key="compagnies(id)"))},
          "users", "company_id", "foreign_key", "compagnies")


def test_foreign_key_to_unknown_column_is_an_error(tmp_path):
    error(tmp_path, {"companies": entity(), "users": entity(col("company_id", foreign_key="companies(uid)"))},
          "users", "foreign_key", "companies", "uid")


def test_malformed_foreign_key_is_an_error(tmp_path):
    error(tmp_path, {"companies": entity(), "users": entity(col("company_id", foreign_key="companies.id"))},
          "users", "company_id", "foreign_key", "companies.id")


def test_foreign_key_cycle_is_an_error_naming_both_tables(tmp_path):
    error(tmp_path, {
        "alpha": entity(col("beta_id", foreign_key="beta(id)")),
        "beta": entity(col("alpha_id", foreign_key="alpha(id)")),
    }, "cycle", "alpha", "beta")


def test_unknown_import_strategy_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(import_strategy="user_event")}, "things", "import_strategy", "user_event")


def test_additional_mapping_to_unknown_column_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(col("a"), additional_mappings={"owner": "owner_id"})},
          "things", "additional_mappings", "owner_id")


def test_explicit_mapping_to_unknown_column_is_an_error(tmp_path):
    error(tmp_path, {"links": link(col("a"), explicit_mappings={"creation_date": "created_at"})},
          "links", "explicit_mappings", "created_at")


def test_column_mapped_twice_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(col("a"), additional_mappings={"x": "a", "y": "a"})},
          "things", "additional_mappings", "'a'")


def test_fallback_for_unknown_column_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(col("a"), fallbacks={"b": ["c"]})}, "things", "fallbacks", "'b'")


def test_duplicated_column_name_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(col("label"), col("label", "TEXT"))}, "things", "label", "twice")


def test_additional_column_repeating_a_base_column_is_an_error(tmp_path):
    error(tmp_path, {"things": entity(col("created_at", "TIMESTAMP"))}, "things", "created_at")


@pytest.mark.parametrize("sql_type", ["VARCHAR; DROP TABLE x", "VARCHAR(x)", "TEXT -- comment", "(255)"])
def test_non_sql_type_is_an_error(tmp_path, sql_type):
    error(tmp_path, {"things": entity(col("a", sql_type))}, "things", "'a'", "sql_type")


def test_table_without_base_unique_constraint_or_strategy_is_an_error(tmp_path):
    error(tmp_path, {"links": {"columns": [col("a")]}}, "links", "unique_constraints")


def test_relationship_strategy_needs_a_unique_constraint(tmp_path):
    error(tmp_path, {"links": {"columns": [col("user_id"), col("event_id")], "import_strategy": "user_events"}},
          "links", "user_events", "unique_constraints")


def test_relationship_strategy_needs_its_columns(tmp_path):
    error(tmp_path, {"links": {"columns": [col("user_id"), col("other")], "import_strategy": "user_events",
                               "unique_constraints": [["user_id", "other"]]}},
          "links", "user_events", "event_id")


def test_reference_to_a_generated_key_is_resolved_by_the_parents_unique_constraint(tmp_path):
    config = load(tmp_path, {
        "days": {"columns": [col("id", "SERIAL", primary_key=True), col("user_id"), col("day", "DATE")],
                 "unique_constraints": [["user_id", "day"]]},
        "notes": entity(col("day_id", sql_type="INTEGER", foreign_key="days(id)")),
    })
    assert config.tables["notes"].column("day_id").foreign_key.natural_key == ("user_id", "day")
    assert config.tables["days"].identity == ("user_id", "day")


def test_moments_tables_are_selected_together(tmp_path):
    config = load_config(ROOT / "config" / "schemas.yaml")
    names = [t.name for t in config.ordered(["users_logbooks_moments_details"])]
    assert names == ["users_logbooks_moments", "users_logbooks_moments_details"]


def test_unique_constraint_on_unknown_column_is_an_error(tmp_path):
    error(tmp_path, {"links": {"columns": [col("a")], "unique_constraints": [["a", "zz"]]}},
          "links", "unique_constraints", "zz")


def test_table_without_columns_is_an_error(tmp_path):
    error(tmp_path, {"things": {"export_order": 1}}, "things", "no columns")


def test_two_tables_with_the_same_name_is_an_error(tmp_path):
    error(tmp_path, {"a": entity(name="same"), "b": entity(name="same")}, "'b'", "same")


def test_missing_file_is_an_error(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_directory_instead_of_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_non_utf8_file_is_an_error(tmp_path):
    path = tmp_path / "schemas.yaml"
    path.write_bytes(b"things:\n  include_base: true  # caf\xe9\n")
    with pytest.raises(ConfigError, match="schemas.yaml"):
        load_config(path)


def test_invalid_yaml_is_an_error(tmp_path):
    error(tmp_path, "things:\n  include_base: [true\n", "not valid YAML")


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_is_an_error(tmp_path, text):
    error(tmp_path, text, "mapping")


@pytest.mark.parametrize("text", ["- things\n", "just text\n"])
def test_file_that_is_not_a_mapping_is_an_error(tmp_path, text):
    error(tmp_path, text, "mapping")


@pytest.mark.parametrize("text", ["tables:\n", "tables: {}\n", "tables: [a, b]\n"])
def test_empty_or_non_mapping_tables_key_is_an_error(tmp_path, text):
    error(tmp_path, text, "tables")


def test_unsupported_sql_type_is_a_config_error(tmp_path):
    error(tmp_path, {"t": {"include_base": True, "additional_columns": [col("p", sql_type="JSONB")]}}, "t", "sql_type")


def test_two_primary_keys_are_a_config_error(tmp_path):
    columns = [col("a", primary_key=True), col("b", primary_key=True)]
    error(tmp_path, {"t": {"columns": columns, "unique_constraints": [["a"]]}}, "t", "primary_key")


def test_a_mapping_order_does_not_hide_a_double_mapping(tmp_path):
    columns = [col("x"), col("created_at", sql_type="TIMESTAMP")]
    spec = {"columns": columns, "unique_constraints": [["x"]], "explicit_mappings": {"foo": "x", "creation_date": "x"}}
    error(tmp_path, {"t": spec}, "t", "mapped twice")


def test_foreign_key_must_target_a_key(tmp_path):
    parent = {"include_base": True}
    child = {"include_base": True, "additional_columns": [col("p", foreign_key="parent(created_at)")]}
    error(tmp_path, {"parent": parent, "child": child}, "child", "foreign_key")
