-- users_logbooks_moments_details (MAPPING.md 3.30, 4.4, 4.6): the answers of the candidates
-- that emit a moment. A detail id found under two moments (not expected) stays with the most
-- recently updated moment (C11); the other copy is dropped with the warning detail_moved.
-- The unit of a detail is its moment (_unit): they are re-derived together.
SELECT a.source_id AS _source_id, a.source_collection AS _source_collection, a.moment_id AS _unit, a.d,
       CASE WHEN row_number() OVER (
           PARTITION BY a.source_id
           ORDER BY c.update_date DESC NULLS LAST, c.creation_date DESC NULLS LAST, c.id DESC
       ) > 1 THEN 'detail_moved' END AS _dropped
FROM moment_answers a
JOIN moment_outcomes o ON o.id = a.moment_id AND o.skip IS NULL
JOIN moment_candidates c ON c.id = a.moment_id
