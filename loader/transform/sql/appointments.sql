-- appointments (MAPPING.md 3.24): stored values first, then two fallbacks [decision D22]:
--   user  <- the `user` of the referenced coaching document;
--   order <- 1-based rank of the appointment among those of the same coaching, by start_date then _id.
-- The fallbacks are written into the document so that the generic typing step treats stored and
-- derived values alike (json_merge_patch drops a key whose new value is null).
WITH appointments AS (
    SELECT _id, CAST(doc AS JSON) AS d FROM {src}
),
ranked AS (
    SELECT _id, d,
           bson_ref(json_extract(d, '$.coaching'), '_id') AS coaching_id,
           CASE WHEN bson_ref(json_extract(d, '$.coaching'), '_id') IS NOT NULL THEN
               row_number() OVER (
                   PARTITION BY bson_ref(json_extract(d, '$.coaching'), '_id')
                   ORDER BY bson_instant(json_extract(d, '$.start_date')) NULLS LAST, _id)
           END AS rank_in_coaching
    FROM appointments
),
coachings AS (
    SELECT _id AS coaching_id, bson_nn(json_extract(CAST(doc AS JSON), '$.user')) AS coaching_user
    FROM {src_coachings}
)
SELECT r._id AS _source_id, 'appointments' AS _source_collection,
       json_merge_patch(r.d, json_object(
           'user', coalesce(bson_nn(json_extract(r.d, '$.user')), c.coaching_user),
           'order', coalesce(bson_nn(json_extract(r.d, '$.order')), to_json(r.rank_in_coaching))
       )) AS d,
       NULL AS _dropped
FROM ranked r
LEFT JOIN coachings c USING (coaching_id)
