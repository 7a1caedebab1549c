-- DuckDB macros over MongoDB Extended JSON (relaxed mode, as written by the extract stage).
-- A staged document keeps every BSON type recoverable: ObjectId {"$oid": ...}, date {"$date": ...},
-- Decimal128 {"$numberDecimal": ...}, NaN/Infinity {"$numberDouble": ...}; other numbers,
-- strings, booleans, arrays and documents are plain JSON. A string holding invalid UTF-8 is
-- staged as {"$invalidUtf8": text with \xNN escapes} (loader/extract/mongo.py); it converts to
-- nothing, so the rows reading it are rejected (`invalid_utf8`).
-- Every conversion returns NULL when the value cannot be converted; callers decide whether a
-- NULL from a present value is a reject (MAPPING.md C6) or a warning (C5).

-- The BSON type of a value; NULL when the field is missing, 'null' for an explicit null.
CREATE OR REPLACE MACRO bson_type(j) AS CASE json_type(j)
    WHEN 'NULL' THEN 'null'
    WHEN 'VARCHAR' THEN 'string'
    WHEN 'BOOLEAN' THEN 'bool'
    WHEN 'BIGINT' THEN 'int'
    WHEN 'UBIGINT' THEN 'int'
    WHEN 'DOUBLE' THEN 'double'
    WHEN 'ARRAY' THEN 'array'
    WHEN 'OBJECT' THEN CASE
        WHEN json_exists(j, '$."$oid"') THEN 'objectId'
        WHEN json_exists(j, '$."$date"') THEN 'date'
        WHEN json_exists(j, '$."$numberDecimal"') THEN 'decimal'
        WHEN json_exists(j, '$."$numberDouble"') THEN 'double'
        WHEN json_exists(j, '$."$numberLong"') THEN 'int'
        WHEN json_exists(j, '$."$invalidUtf8"') THEN 'invalidUtf8'
        WHEN starts_with(json_keys(j)[1], '$') THEN 'other'
        ELSE 'object' END
    END;

-- Missing and explicit null are the same thing for the loader (C4).
CREATE OR REPLACE MACRO bson_nn(j) AS CASE WHEN json_type(j) = 'NULL' THEN NULL ELSE j END;
CREATE OR REPLACE MACRO bson_present(j) AS j IS NOT NULL AND json_type(j) <> 'NULL';

-- The UTC instant of a BSON date (TIMESTAMPTZ); dates outside 1970..9999 come as $numberLong ms.
CREATE OR REPLACE MACRO bson_instant(j) AS CASE
    WHEN json_type(j, '$."$date"') = 'VARCHAR' THEN TRY_CAST(json_extract_string(j, '$."$date"') AS TIMESTAMPTZ)
    WHEN json_exists(j, '$."$date"."$numberLong"')
        THEN TRY(to_timestamp(0) + to_milliseconds(TRY_CAST(json_extract_string(j, '$."$date"."$numberLong"') AS BIGINT)))
    END;

CREATE OR REPLACE MACRO in_year_range(ts) AS CASE WHEN year(ts) BETWEEN 1 AND 9999 THEN ts END;

CREATE OR REPLACE MACRO bson_to_double(j) AS CASE
    WHEN json_type(j) IN ('DOUBLE', 'BIGINT', 'UBIGINT') THEN TRY_CAST(j AS DOUBLE)
    WHEN json_exists(j, '$."$numberDouble"') THEN TRY_CAST(json_extract_string(j, '$."$numberDouble"') AS DOUBLE)
    WHEN json_exists(j, '$."$numberDecimal"') THEN TRY_CAST(json_extract_string(j, '$."$numberDecimal"') AS DOUBLE)
    WHEN json_exists(j, '$."$numberLong"') THEN TRY_CAST(json_extract_string(j, '$."$numberLong"') AS DOUBLE)
    END;

-- Text (C6): strings unchanged, ObjectId hex, integers as digits, doubles shortest round-trip
-- (72.5, 72.0), booleans true/false, dates ISO-8601 UTC; arrays and documents do not convert.
CREATE OR REPLACE MACRO bson_to_text(j) AS CASE bson_type(j)
    WHEN 'string' THEN json_extract_string(j, '$')
    WHEN 'objectId' THEN lower(json_extract_string(j, '$."$oid"'))
    WHEN 'int' THEN coalesce(json_extract_string(j, '$."$numberLong"'), CAST(j AS VARCHAR))
    WHEN 'double' THEN CAST(bson_to_double(j) AS VARCHAR)
    WHEN 'bool' THEN CAST(j AS VARCHAR)
    WHEN 'decimal' THEN json_extract_string(j, '$."$numberDecimal"')
    WHEN 'date' THEN strftime(timezone('UTC', bson_instant(j)), '%Y-%m-%dT%H:%M:%S.%gZ')
    END;
-- Text shown for a value, '' when it is missing or null (question titles, answer texts).
CREATE OR REPLACE MACRO bson_text_or_empty(j) AS coalesce(bson_to_text(bson_nn(j)), '');

-- Integers (C6): BSON integers exactly (beyond 2^53 a DOUBLE would round them); doubles, decimals
-- and numeric strings rounded half away from zero. A HUGEINT (NULL beyond it) that the caller
-- range-checks before casting.
CREATE OR REPLACE MACRO bson_to_integer(j) AS CASE
    WHEN bson_type(j) = 'int' THEN TRY_CAST(bson_to_text(j) AS HUGEINT)
    WHEN bson_type(j) IN ('double', 'decimal') AND isfinite(bson_to_double(j)) THEN TRY_CAST(round(bson_to_double(j)) AS HUGEINT)
    WHEN bson_type(j) = 'string' AND isfinite(TRY_CAST(json_extract_string(j, '$') AS DOUBLE))
        THEN TRY_CAST(round(TRY_CAST(json_extract_string(j, '$') AS DOUBLE)) AS HUGEINT)
    END;

CREATE OR REPLACE MACRO bson_to_number(j) AS CASE
    WHEN bson_type(j) IN ('int', 'double', 'decimal') THEN bson_to_double(j)
    WHEN bson_type(j) = 'string' THEN TRY_CAST(json_extract_string(j, '$') AS DOUBLE)
    END;

CREATE OR REPLACE MACRO bson_to_boolean(j) AS CASE bson_type(j)
    WHEN 'bool' THEN CAST(j AS BOOLEAN)
    WHEN 'int' THEN CASE bson_to_double(j) WHEN 0 THEN false WHEN 1 THEN true END
    WHEN 'double' THEN CASE bson_to_double(j) WHEN 0 THEN false WHEN 1 THEN true END
    WHEN 'string' THEN CASE
        WHEN lower(json_extract_string(j, '$')) IN ('true', 't', 'yes', '1') THEN true
        WHEN lower(json_extract_string(j, '$')) IN ('false', 'f', 'no', '0') THEN false END
    END;

-- TIMESTAMP (C7): the UTC wall clock; offset-less ISO strings are taken as UTC (session zone).
CREATE OR REPLACE MACRO bson_to_timestamp(j) AS in_year_range(CASE bson_type(j)
    WHEN 'date' THEN timezone('UTC', bson_instant(j))
    WHEN 'string' THEN timezone('UTC', TRY_CAST(json_extract_string(j, '$') AS TIMESTAMPTZ))
    END);

-- DATE (C8): the calendar day of the instant in the source time zone; 'YYYY-MM-DD' as is.
-- The one function for every DATE, so that joins on days agree.
CREATE OR REPLACE MACRO bson_to_date(j, tz) AS CAST(in_year_range(CASE bson_type(j)
    WHEN 'date' THEN timezone(tz, bson_instant(j))
    WHEN 'string' THEN CASE
        WHEN regexp_full_match(json_extract_string(j, '$'), '\d{4}-\d{2}-\d{2}') THEN TRY_CAST(json_extract_string(j, '$') AS TIMESTAMP)
        ELSE timezone(tz, TRY_CAST(json_extract_string(j, '$') AS TIMESTAMPTZ)) END
    END) AS DATE);

-- References (C5): ObjectId -> hex; 24-hex string -> lower-cased; embedded document -> its
-- `key` field, else `_id`, normalised again (two levels); anything else -> NULL.
CREATE OR REPLACE MACRO bson_ref_leaf(j) AS CASE bson_type(j)
    WHEN 'objectId' THEN lower(json_extract_string(j, '$."$oid"'))
    WHEN 'string' THEN CASE WHEN regexp_full_match(json_extract_string(j, '$'), '[0-9a-fA-F]{24}') THEN lower(json_extract_string(j, '$')) END
    END;
CREATE OR REPLACE MACRO bson_ref_inner(j) AS CASE
    WHEN bson_type(j) = 'object' THEN bson_ref_leaf(json_extract(j, '$._id')) ELSE bson_ref_leaf(j) END;
CREATE OR REPLACE MACRO bson_ref(j, key) AS CASE
    WHEN bson_type(j) = 'object'
        THEN bson_ref_inner(coalesce(bson_nn(json_extract(j, '$."' || key || '"')), bson_nn(json_extract(j, '$._id'))))
    ELSE bson_ref_leaf(j) END;

-- The staged `_id` of a document's `_id` value: ObjectId hex, else the value's own text.
CREATE OR REPLACE MACRO bson_id(id) AS coalesce(bson_ref_leaf(id), bson_to_text(id), CAST(id AS VARCHAR));
