-- appointments (MAPPING.md 3.24, 5.3): the changed appointments plus every appointment of a
-- coaching that gained, lost or re-dated one (the `order` fallback ranks the siblings), or whose
-- coaching document changed (the `user` fallback).
WITH coachings AS (
    SELECT bson_ref(json_extract(CAST(doc AS JSON), '$.coaching'), '_id') AS coaching_id FROM {changed}
    UNION
    SELECT _id FROM {changed_ids_coachings}
)
SELECT _id FROM {changed}
UNION
SELECT _id FROM {src}
WHERE bson_ref(json_extract(CAST(doc AS JSON), '$.coaching'), '_id') IN (SELECT coaching_id FROM coachings)
