-- users_logbooks_moments (MAPPING.md 3.28, 4.6), from the temporary tables of moments_pass.sql:
-- one row per candidate that emits a moment, typed from the userquizz document (id, timestamps,
-- `name` -> type); its users_logbook id is found at load time by the natural key (user_id, day).
-- Skipped candidates and the pass's warnings are records without a row; an unmatched one keeps
-- its (user_id, day) so that an incremental run re-derives it when that row appears.
SELECT c.id AS _source_id, 'userquizzs' AS _source_collection,
       CASE WHEN o.skip IS NULL THEN c.d END AS d,
       o.skip AS _dropped,
       CASE WHEN coalesce(o.skip, 'no_users_logbook_match') = 'no_users_logbook_match' THEN o.user_id END AS user_logbook_id__user_id,
       CASE WHEN coalesce(o.skip, 'no_users_logbook_match') = 'no_users_logbook_match' THEN o.day END AS user_logbook_id__day
FROM moment_candidates c JOIN moment_outcomes o USING (id)
UNION ALL
SELECT moment_id, 'userquizzs', to_json(value), reason, NULL, NULL
FROM moment_warnings
