-- menu_recipes (UPSERT-KEY, MAPPING.md 3.21): documents of `menurecipes` plus those of a legacy
-- `menu_recipes` collection, one per _id (C11: update_date, creation_date, then collection
-- name); the rows are then merged per (menu_id, recipe_id) with the "latest timestamps" rule.
WITH candidates AS (
    SELECT _id, creation_date, update_date, {collection} AS _source_collection, CAST(doc AS JSON) AS d FROM {src}
    UNION ALL
    SELECT _id, creation_date, update_date, 'menu_recipes', CAST(doc AS JSON) FROM {src_menu_recipes}
)
SELECT _id AS _source_id, _source_collection, d, NULL AS _dropped
FROM candidates
QUALIFY row_number() OVER (
    PARTITION BY _id
    ORDER BY update_date DESC NULLS LAST, creation_date DESC NULLS LAST, _source_collection DESC
) = 1
