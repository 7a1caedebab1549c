-- menus (MAPPING.md 3.13): menu events (discriminator `__t`, else `kind`, equal to 'menu', C9)
-- plus every document of a legacy `menus` collection. One row per _id: when both sources hold
-- it, the most recently updated document wins (C11: update_date, creation_date, then source).
-- The discriminators' types are columns (a macro given bson_type(...) pastes it at each use:
-- DuckDB took 0.2 s to plan this query so, more than deriving a few changed events).
WITH events AS (
    SELECT *, bson_type(kind[1]) AS t1, bson_type(kind[2]) AS t2
    FROM (SELECT _id, creation_date, update_date, doc, json_extract(doc, ['$.__t', '$.kind']) AS kind FROM {src_events})
),
candidates AS (
    SELECT _id, creation_date, update_date, 'events' AS _source_collection, CAST(doc AS JSON) AS d
    FROM events
    WHERE coalesce(bson_to_text_typed(kind[1], t1), bson_to_text_typed(kind[2], t2)) = 'menu'
    UNION ALL
    SELECT _id, creation_date, update_date, 'menus', CAST(doc AS JSON)
    FROM {src_menus}
)
SELECT _id AS _source_id, _source_collection, d, NULL AS _dropped
FROM candidates
QUALIFY row_number() OVER (
    PARTITION BY _id
    ORDER BY update_date DESC NULLS LAST, creation_date DESC NULLS LAST, _source_collection
) = 1
