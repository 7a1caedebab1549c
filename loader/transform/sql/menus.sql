-- menus (MAPPING.md 3.13): menu events (discriminator `__t`, else `kind`, equal to 'menu', C9)
-- plus every document of a legacy `menus` collection. One row per _id: when both sources hold
-- it, the most recently updated document wins (C11: update_date, creation_date, then source).
WITH candidates AS (
    SELECT _id, creation_date, update_date, 'events' AS _source_collection, CAST(doc AS JSON) AS d
    FROM {src_events}
    WHERE coalesce(bson_to_text(bson_nn(json_extract(CAST(doc AS JSON), '$.__t'))),
                   bson_to_text(bson_nn(json_extract(CAST(doc AS JSON), '$.kind')))) = 'menu'
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
