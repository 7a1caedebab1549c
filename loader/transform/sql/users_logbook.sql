-- users_logbook (UPSERT-KEY, MAPPING.md 3.20): every coaching logbook with a user; the typing
-- step reads user, day and the timestamps, and the rows are then merged per (user_id, day) with
-- the "latest timestamps" rule (5.5). A document whose `user` is missing, null or not a
-- reference (C5) is skipped as `no_user`.
SELECT _id AS _source_id, {collection} AS _source_collection,
       CASE WHEN bson_ref(json_extract(d, '$.user'), '_id') IS NULL THEN json_extract(d, '$.user') ELSE d END AS d,
       CASE WHEN bson_ref(json_extract(d, '$.user'), '_id') IS NULL THEN 'no_user' END AS _dropped
FROM (SELECT _id, CAST(doc AS JSON) AS d FROM {src})
