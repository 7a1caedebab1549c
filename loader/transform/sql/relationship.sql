-- Relationship tables (DELETE-INSERT, MAPPING.md 3.14, 3.16, 3.17, 3.23, 3.27, 3.31, 3.32, 5.6):
-- one row per distinct reference in the parent document's array(s).
--   * elements are normalised with C5 (ObjectId, 24-hex string, or embedded document: the
--     array's key, else _id); an element that does not normalise is dropped (bad_reference);
--   * a reference repeated inside one array keeps its first occurrence (duplicate_in_source);
--   * a field that is present but not an array gives no rows (bad_reference);
--   * created_at is the parent's creation_date, or for user_events the element's `date` when it
--     has one; updated_at is the parent's update_date, else created_at.
-- Each row is passed to the typing step as a small document whose fields are the ones the YAML
-- maps to the table's columns (parent column, element column, creation_date, update_date and
-- constant columns such as users_targets.type). `_dropped` gives the reason of a dropped element.
-- The elements are unnested straight from the staged parents (read in row groups of bounded size)
-- into a table, and normalised from there: JSON functions applied to the elements in the pipeline
-- of the unnest held memory for every element of the statement (DuckDB 2.0: 750,000 elements of
-- 441 `contents` needed 1.5 GB). A field that is present but not an array is kept as one element
-- with is_array false.
CREATE OR REPLACE TEMP TABLE relationship_elements AS
WITH parents AS (
    SELECT _id, CAST(doc AS JSON) AS d FROM {src}
),
arrays(name, ref_key, constants) AS (VALUES {arrays}),
fields AS (  -- the parent's timestamps, not the parent itself, go along with each element (arrays can be long)
    SELECT p._id, a.name, a.ref_key, a.constants, json_extract(p.d, '$."' || a.name || '"') AS value,
           json_type(value) = 'ARRAY' AS is_array,
           bson_nn(json_extract(p.d, '$.creation_date')) AS parent_created,
           bson_nn(json_extract(p.d, '$.update_date')) AS parent_updated
    FROM parents p CROSS JOIN arrays a
)
SELECT _id, parent_created, parent_updated, name, ref_key, constants, is_array,
       unnest(CASE WHEN is_array THEN json_extract(value, '$[*]') ELSE [value] END) AS element,
       unnest(CASE WHEN is_array THEN range(1, CAST(json_array_length(value) AS BIGINT) + 1) ELSE [NULL] END) AS position
FROM fields
WHERE json_type(value) <> 'NULL';

WITH normalised AS (
    SELECT *, bson_ref(element, ref_key) AS target
    FROM relationship_elements
    WHERE is_array
),
numbered AS (
    SELECT *,
           row_number() OVER (PARTITION BY _id, name, target ORDER BY position) AS occurrence,
           coalesce(
               CASE WHEN {element_date} AND bson_type(element) = 'object' THEN bson_nn(json_extract(element, '$.date')) END,
               parent_created
           ) AS created
    FROM normalised
)
SELECT _id AS _source_id, {collection} AS _source_collection,
       CASE WHEN target IS NULL OR occurrence > 1 THEN element ELSE
           json_merge_patch(constants, json_object(
               {parent_column}, _id,
               {element_column}, target,
               'creation_date', created,
               'update_date', coalesce(parent_updated, created)
           ))
       END AS d,
       CASE WHEN target IS NULL THEN 'bad_reference' WHEN occurrence > 1 THEN 'duplicate_in_source' END AS _dropped
FROM numbered
UNION ALL
SELECT _id, {collection}, element, 'bad_reference'
FROM relationship_elements
WHERE NOT is_array
