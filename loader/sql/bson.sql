-- DuckDB macros over MongoDB Extended JSON (relaxed mode, as written by the extract stage).
-- A staged document keeps every BSON type recoverable: ObjectId {"$oid": ...}, date {"$date": ...},
-- Decimal128 {"$numberDecimal": ...}, NaN/Infinity {"$numberDouble": ...}; other numbers,
-- strings, booleans, arrays and documents are plain JSON. A string holding invalid UTF-8 is
-- staged as {"$invalidUtf8": text with \xNN escapes} (loader/extract/mongo.py); it converts to
-- nothing, so the rows reading it are rejected (`invalid_utf8`).
-- Every conversion returns NULL when the value cannot be converted; callers decide whether a
-- NULL from a present value is a reject (MAPPING.md C6) or a warning (C5).

-- The BSON type of a value; NULL when the field is missing, 'null' for an explicit null. Objects
-- and strings come first: they are most values, and a CASE evaluates its operand (json_type)
-- again for every WHEN it tries.
CREATE OR REPLACE MACRO bson_type(j) AS CASE json_type(j)
    WHEN 'OBJECT' THEN CASE
        WHEN json_exists(j, '$."$oid"') THEN 'objectId'
        WHEN json_exists(j, '$."$date"') THEN 'date'
        WHEN json_exists(j, '$."$numberDecimal"') THEN 'decimal'
        WHEN json_exists(j, '$."$numberDouble"') THEN 'double'
        WHEN json_exists(j, '$."$numberLong"') THEN 'int'
        WHEN json_exists(j, '$."$invalidUtf8"') THEN 'invalidUtf8'
        WHEN starts_with(json_keys(j)[1], '$') THEN 'other'
        ELSE 'object' END
    WHEN 'VARCHAR' THEN 'string'
    WHEN 'NULL' THEN 'null'
    WHEN 'BOOLEAN' THEN 'bool'
    WHEN 'BIGINT' THEN 'int'
    WHEN 'UBIGINT' THEN 'int'
    WHEN 'DOUBLE' THEN 'double'
    WHEN 'ARRAY' THEN 'array'
    END;

-- Missing and explicit null are the same thing for the loader (C4).
CREATE OR REPLACE MACRO bson_nn(j) AS CASE WHEN json_type(j) = 'NULL' THEN NULL ELSE j END;
CREATE OR REPLACE MACRO bson_present(j) AS j IS NOT NULL AND json_type(j) <> 'NULL';

-- Each conversion below is given the value's bson_type(j) as t, computed by the caller once, as a
-- column of a subquery: a macro is pasted into its caller, its arguments wherever its body names
-- them, so `CASE bson_type(j) WHEN ...` would evaluate bson_type (up to seven JSON parses) once
-- per WHEN tried, and DuckDB would plan every copy (a bson_to_text(j) computing its own type, j a
-- JSON path, came to about a thousand expression nodes: more time planning than running in an
-- incremental transform).

-- The UTC instant of a BSON date (TIMESTAMPTZ); dates outside 1970..9999 come as $numberLong ms.
CREATE OR REPLACE MACRO bson_instant(j) AS CASE
    WHEN json_type(j, '$."$date"') = 'VARCHAR' THEN TRY_CAST(json_extract_string(j, '$."$date"') AS TIMESTAMPTZ)
    WHEN json_exists(j, '$."$date"."$numberLong"')
        THEN TRY(to_timestamp(0) + to_milliseconds(TRY_CAST(json_extract_string(j, '$."$date"."$numberLong"') AS BIGINT)))
    END;

CREATE OR REPLACE MACRO in_year_range(ts) AS CASE WHEN year(ts) BETWEEN 1 AND 9999 THEN ts END;

-- Numbers as DOUBLE: plain JSON numbers, and the wrapped ones ({"$numberDouble": "NaN"}, ...).
CREATE OR REPLACE MACRO bson_to_double_typed(j, t) AS CASE
    WHEN t NOT IN ('int', 'double', 'decimal') THEN NULL
    WHEN t = 'decimal' THEN TRY_CAST(json_extract_string(j, '$."$numberDecimal"') AS DOUBLE)
    WHEN json_type(j) = 'OBJECT'
        THEN TRY_CAST(coalesce(json_extract_string(j, '$."$numberDouble"'), json_extract_string(j, '$."$numberLong"')) AS DOUBLE)
    ELSE TRY_CAST(j AS DOUBLE) END;

-- Text (C6): strings unchanged, ObjectId hex, integers as digits, doubles shortest round-trip
-- (72.5, 72.0), booleans true/false, dates ISO-8601 UTC; arrays and documents do not convert.
CREATE OR REPLACE MACRO bson_to_text_typed(j, t) AS CASE t
    WHEN 'string' THEN json_extract_string(j, '$')
    WHEN 'objectId' THEN lower(json_extract_string(j, '$."$oid"'))
    WHEN 'date' THEN strftime(timezone('UTC', bson_instant(j)), '%Y-%m-%dT%H:%M:%S.%gZ')
    WHEN 'int' THEN coalesce(json_extract_string(j, '$."$numberLong"'), CAST(j AS VARCHAR))
    WHEN 'double' THEN CAST(bson_to_double_typed(j, t) AS VARCHAR)
    WHEN 'bool' THEN CAST(j AS VARCHAR)
    WHEN 'decimal' THEN json_extract_string(j, '$."$numberDecimal"')
    END;
-- Text shown for a value, '' when it is missing or null (question titles, answer texts).
CREATE OR REPLACE MACRO bson_text_or_empty_typed(j, t) AS coalesce(bson_to_text_typed(j, t), '');

-- Integers (C6): BSON integers exactly (beyond 2^53 a DOUBLE would round them); doubles, decimals
-- and numeric strings rounded half away from zero. A HUGEINT (NULL beyond it) that the caller
-- range-checks before casting.
CREATE OR REPLACE MACRO bson_to_integer_typed(j, t) AS CASE
    WHEN t = 'int' THEN TRY_CAST(bson_to_text_typed(j, t) AS HUGEINT)
    WHEN t IN ('double', 'decimal') AND isfinite(bson_to_double_typed(j, t)) THEN TRY_CAST(round(bson_to_double_typed(j, t)) AS HUGEINT)
    WHEN t = 'string' AND isfinite(TRY_CAST(json_extract_string(j, '$') AS DOUBLE))
        THEN TRY_CAST(round(TRY_CAST(json_extract_string(j, '$') AS DOUBLE)) AS HUGEINT)
    END;

CREATE OR REPLACE MACRO bson_to_number_typed(j, t) AS CASE
    WHEN t IN ('int', 'double', 'decimal') THEN bson_to_double_typed(j, t)
    WHEN t = 'string' THEN TRY_CAST(json_extract_string(j, '$') AS DOUBLE)
    END;

CREATE OR REPLACE MACRO bson_to_boolean_typed(j, t) AS CASE t
    WHEN 'bool' THEN CAST(j AS BOOLEAN)
    WHEN 'int' THEN CASE bson_to_double_typed(j, t) WHEN 0 THEN false WHEN 1 THEN true END
    WHEN 'double' THEN CASE bson_to_double_typed(j, t) WHEN 0 THEN false WHEN 1 THEN true END
    WHEN 'string' THEN CASE
        WHEN lower(json_extract_string(j, '$')) IN ('true', 't', 'yes', '1') THEN true
        WHEN lower(json_extract_string(j, '$')) IN ('false', 'f', 'no', '0') THEN false END
    END;

-- TIMESTAMP (C7): the UTC wall clock; offset-less ISO strings are taken as UTC (session zone).
CREATE OR REPLACE MACRO bson_to_timestamp_typed(j, t) AS in_year_range(CASE t
    WHEN 'date' THEN timezone('UTC', bson_instant(j))
    WHEN 'string' THEN timezone('UTC', TRY_CAST(json_extract_string(j, '$') AS TIMESTAMPTZ))
    END);

-- DATE (C8): the calendar day of the instant in the source time zone; 'YYYY-MM-DD' as is.
-- The one function for every DATE, so that joins on days agree.
CREATE OR REPLACE MACRO bson_to_date_typed(j, t, tz) AS CAST(in_year_range(CASE t
    WHEN 'date' THEN timezone(tz, bson_instant(j))
    WHEN 'string' THEN CASE
        WHEN regexp_full_match(json_extract_string(j, '$'), '\d{4}-\d{2}-\d{2}') THEN TRY_CAST(json_extract_string(j, '$') AS TIMESTAMP)
        ELSE timezone(tz, TRY_CAST(json_extract_string(j, '$') AS TIMESTAMPTZ)) END
    END) AS DATE);

-- References (C5): ObjectId -> hex; 24-hex string -> lower-cased; embedded document -> its
-- `key` field, else `_id`, normalised again (two levels); anything else -> NULL.
-- A macro is pasted into its caller with its argument pasted wherever the body names it, so a
-- macro given another macro's result grows with each level: the embedded-document branch binds
-- its value once as a lambda's parameter instead (pasted, a reference cost 40 ms of DuckDB's
-- planning, most of the typing of a table re-deriving a few rows).
CREATE OR REPLACE MACRO bson_ref_leaf(j) AS coalesce(
    lower(json_extract_string(j, '$."$oid"')),
    CASE WHEN json_type(j) = 'VARCHAR' AND regexp_full_match(json_extract_string(j, '$'), '[0-9a-fA-F]{24}')
         THEN lower(json_extract_string(j, '$')) END);
CREATE OR REPLACE MACRO bson_ref_embedded(j, key) AS list_transform(
    [coalesce(bson_nn(json_extract(j, '$."' || key || '"')), bson_nn(json_extract(j, '$._id')))],
    lambda x: coalesce(bson_ref_leaf(x), CASE WHEN bson_type(x) = 'object' THEN bson_ref_leaf(json_extract(x, '$._id')) END))[1];
CREATE OR REPLACE MACRO bson_ref_typed(j, key, t) AS CASE WHEN t = 'object' THEN bson_ref_embedded(j, key) ELSE bson_ref_leaf(j) END;
-- bson_ref_leaf is NULL for an embedded document, and reads an ObjectId (the usual reference) first.
CREATE OR REPLACE MACRO bson_ref(j, key) AS coalesce(bson_ref_leaf(j), CASE WHEN bson_type(j) = 'object' THEN bson_ref_embedded(j, key) END);
-- The 24-hex tokens of a document's Extended JSON (ObjectIds and hex strings), lower-cased as
-- references are (an upper-case hex string is one, C5): a superset of its references, which the
-- incremental selections read (a few extra candidates).
CREATE OR REPLACE MACRO bson_ref_tokens(doc) AS list_transform(regexp_extract_all(doc, '[0-9a-fA-F]{24}'), lambda t: lower(t));

-- The staged `_id` of a document's `_id` value: ObjectId hex, else the value's own text.
CREATE OR REPLACE MACRO bson_id_typed(id, t) AS coalesce(bson_ref_leaf(id), bson_to_text_typed(id, t), CAST(id AS VARCHAR));
