-- users_logbooks_moments and details: the candidates of MAPPING.md 4.7 [D16], rules 1-4 over the
-- old and new versions of the changed documents, widened to everything else a full run reads:
-- a question's template (title) and option items (answer texts), and whether the candidate's
-- users_logbook row exists (a moment without it is skipped as no_users_logbook_match).
-- References are found as 24-hex tokens of the stored documents (ObjectId or hex string, C5):
-- a superset of the real links, which only costs a few extra candidates; the tokens of every user
-- question and userquizz are kept between runs (Strategy.references). A template reaches
-- its (many) questions only when its title, the one field read from it, changed, or when it
-- appeared or disappeared.
WITH retitled_templates AS (
    SELECT _id FROM (SELECT _id, title, bson_type(title) AS title_type
                     FROM (SELECT _id, json_extract(CAST(doc AS JSON), '$.title') AS title FROM {changed_quizzquestions}))
    GROUP BY _id
    HAVING count(*) = 1 OR count(DISTINCT bson_text_or_empty_typed(title, title_type)) > 1
),
question_refs AS (   -- user question -> the templates and items it mentions
    SELECT _unit AS question_id, ref FROM {references_userquizzquestions}
),
touched_questions AS (
    SELECT _id AS question_id FROM {changed_ids_userquizzquestions}                                  -- rule 2
    UNION
    SELECT bson_ref(json_extract(CAST(doc AS JSON), '$.userQuizzQuestion'), '_id') FROM {changed_items}  -- rule 3
    UNION
    SELECT question_id FROM question_refs
    WHERE ref IN (SELECT _id FROM retitled_templates UNION SELECT _id FROM {changed_items})
),
quiz_refs AS (   -- userquizz -> the user questions it lists
    SELECT _unit AS moment_id, ref FROM {references_userquizzs}
),
logbook_match AS (   -- does the users_logbook row of the last emitted or unmatched moment exist?
    SELECT d._unit AS moment_id, d._dropped, ul.user_id IS NOT NULL AS found
    FROM {derived} d
    LEFT JOIN {parent_users_logbook} ul ON ul.user_id = d.user_logbook_id__user_id AND ul.day = d.user_logbook_id__day
    WHERE d._source_collection = 'userquizzs' AND (d._dropped IS NULL OR d._dropped = 'no_users_logbook_match')
),
selected AS (
    SELECT _id FROM {changed_ids_userquizzs}                                                         -- rule 1
    UNION
    SELECT moment_id FROM quiz_refs WHERE ref IN (SELECT question_id FROM touched_questions)
    UNION
    SELECT bson_ref(json_extract(CAST(doc AS JSON), '$.logbook'), '_id') FROM {changed_coachinglogbooks} -- rule 4
    UNION
    SELECT moment_id FROM logbook_match WHERE found = (_dropped IS NOT NULL)
),
listed_questions AS (   -- the user questions the selected userquizzs list, now or before their change
    SELECT ref FROM quiz_refs WHERE moment_id IN (SELECT _id FROM selected)
    UNION
    SELECT unnest(bson_ref_tokens(doc)) FROM {changed_userquizzs}
)
SELECT _id FROM selected
UNION   -- a question listed by two moments gives its detail to one of them (detail_moved): both are derived again
SELECT moment_id FROM quiz_refs
WHERE ref IN (SELECT ref FROM listed_questions) AND ref IN (SELECT question_id FROM question_refs)
