-- Plain entity tables (UPSERT-ID, MAPPING.md 3.x): one row per document of the table's collection.
-- Output contract of every strategy file: _source_id, _source_collection, d (the document as JSON,
-- from which the generic typing step reads each column's mapped field, then its fallbacks) and
-- _dropped: NULL for a row, else the reason why this record gives no row (a skip or a warning;
-- d then holds the offending value). A strategy file may start with statements building temporary
-- tables; its last statement is the records query.
SELECT _id AS _source_id, {collection} AS _source_collection, CAST(doc AS JSON) AS d, NULL AS _dropped
FROM {src}
