-- The logbook flattening of MAPPING.md section 4, as set-based joins; run once per transform,
-- its temporary tables feed moments.sql and moment_details.sql.
--
--   moment_candidates   logbook userquizzs (type = QUIZZ_TYPE_LOGBOOK)                    4.3
--   moment_questions    their questions (C5 key `question`), first occurrence, with the user
--                       question document and its template's title; status says whether the
--                       question qualifies or why not (question_missing, template_missing)  4.3
--   moment_answers      one detail document per answer: items, else the first inline field  4.4
--   moment_warnings     question_missing, template_missing, answer_item_missing            4.8
--   moment_outcomes     per candidate: the skip reason (in the order of 4.6) or the
--                       (user, local day) of its coaching logbook found in users_logbook   4.5

-- Each JSON function parses the whole text it is given: the candidates and their user questions
-- are parsed once for the fields read from them (moment_inline reads its questions field by field:
-- a list of their fields, kept for the 2.5M questions of 5M documents, exceeded DuckDB's 1 GB).
CREATE OR REPLACE TEMP TABLE moment_candidates AS
SELECT _id AS id, creation_date, update_date, CAST(doc AS JSON) AS d
FROM (SELECT *, json_extract(doc, '$.type') AS type FROM {src_userquizzs})
WHERE bson_type(type) = 'string' AND json_extract_string(type, '$') = 'QUIZZ_TYPE_LOGBOOK';

CREATE OR REPLACE TEMP TABLE moment_questions AS
WITH elements AS (
    SELECT id AS moment_id,
           unnest(json_extract(questions, '$[*]')) AS element,
           unnest(range(1, CAST(json_array_length(questions) AS BIGINT) + 1)) AS position
    FROM (SELECT id, json_extract(d, '$.questions') AS questions FROM moment_candidates)
    WHERE json_type(questions) = 'ARRAY'
),
firsts AS (
    SELECT moment_id, question_id, min(position) AS position
    FROM (SELECT moment_id, bson_ref(element, 'question') AS question_id, position FROM elements)
    WHERE question_id IS NOT NULL GROUP BY moment_id, question_id
),
questions AS (
    SELECT id, q, bson_ref(template, '_id') AS template_id
    FROM (SELECT _id AS id, CAST(doc AS JSON) AS q, coalesce(bson_nn(t[1]), bson_nn(t[2])) AS template
          FROM (SELECT *, json_extract(doc, ['$.quizz_question', '$.quizzQuestion']) AS t
                FROM {src_userquizzquestions} WHERE _id IN (SELECT question_id FROM firsts)))
),
templates AS (
    SELECT id, bson_text_or_empty_typed(title, title_type) AS title
    FROM (SELECT id, title, bson_type(title) AS title_type
          FROM (SELECT _id AS id, json_extract(CAST(doc AS JSON), '$.title') AS title FROM {src_quizzquestions}))
)
SELECT f.moment_id, f.question_id, f.position, uq.q, t.title,
       CASE WHEN uq.id IS NULL THEN 'question_missing' WHEN t.id IS NULL THEN 'template_missing' END AS status
FROM firsts f
LEFT JOIN questions uq ON uq.id = f.question_id
LEFT JOIN templates t ON t.id = uq.template_id;

-- The items the candidates' questions can read: their answers and their chosen options.
CREATE OR REPLACE TEMP TABLE moment_items AS
WITH options AS (
    SELECT bson_ref(element, '_id') AS id
    FROM (SELECT unnest(json_extract(q, '$.qcm_answers[*]')) AS element FROM moment_questions
          WHERE json_type(q, '$.qcm_answers') = 'ARRAY')
    UNION
    SELECT bson_ref(json_extract(q, '$.single_enum_answer'), '_id') FROM moment_questions
)
SELECT id, CAST(doc AS JSON) AS d, question_id FROM (
    SELECT _id AS id, doc, bson_ref(json_extract(doc, '$.userQuizzQuestion'), '_id') AS question_id
    FROM {src_items})
WHERE question_id IN (SELECT question_id FROM moment_questions) OR id IN (SELECT id FROM options);

-- 4.4 step 1: item answers (text neither null nor empty), one detail each.
CREATE OR REPLACE TEMP TABLE moment_item_answers AS
SELECT mq.moment_id, mq.question_id, i.id AS source_id, 'items' AS source_collection,
       json_object('_id', i.id,
                   'creation_date', json_extract(i.d, '$.creation_date'),
                   'update_date', json_extract(i.d, '$.update_date'),
                   'user_logbook_moment_id', mq.moment_id,
                   'question', mq.title,
                   'answer', json_extract(i.d, '$.text')) AS d
FROM moment_questions mq
JOIN moment_items i ON i.question_id = mq.question_id
WHERE mq.status IS NULL
  AND bson_present(json_extract(i.d, '$.text'))
  AND json_extract(i.d, '$.text') <> CAST('""' AS JSON);

-- 4.4 step 2: the first usable inline field of a question without item answers. Rendered
-- values are JSON strings; a value that cannot be rendered (scale or boolean of another type)
-- is passed as a one-element array, which the typing step rejects as a type_error (C6).
CREATE OR REPLACE TEMP TABLE moment_inline AS
WITH pending AS (
    SELECT * FROM moment_questions mq
    WHERE status IS NULL
      AND NOT EXISTS (SELECT 1 FROM moment_item_answers a WHERE a.moment_id = mq.moment_id AND a.question_id = mq.question_id)
),
choices AS (  -- qcm_answers: option item ids -> texts in array order
    SELECT moment_id, question_id, position, bson_ref(element, '_id') AS item_id
    FROM (
        SELECT moment_id, question_id,
               unnest(json_extract(answers, '$[*]')) AS element,
               unnest(range(1, CAST(json_array_length(answers) AS BIGINT) + 1)) AS position
        FROM (SELECT moment_id, question_id, json_extract(q, '$.qcm_answers') AS answers FROM pending)
        WHERE json_type(answers) = 'ARRAY'
    )
),
choice_texts AS (
    SELECT moment_id, question_id, position, item_id, found,
           CASE WHEN found THEN bson_to_text_typed(text, text_type) ELSE item_id END AS text
    FROM (SELECT *, bson_type(text) AS text_type
          FROM (SELECT c.moment_id, c.question_id, c.position, c.item_id, i.id IS NOT NULL AS found, json_extract(i.d, '$.text') AS text
                FROM choices c LEFT JOIN moment_items i ON i.id = c.item_id
                WHERE c.item_id IS NOT NULL))
),
joined_choices AS (
    SELECT moment_id, question_id,
           string_agg(text, ', ' ORDER BY position) FILTER (WHERE text <> '') AS text,
           list(item_id ORDER BY position) FILTER (WHERE NOT found) AS missing
    FROM choice_texts GROUP BY ALL
),
fields AS (
    -- the question's timestamps, not the whole question: this table is as long as the questions
    -- (2.5M rows at 5M documents), and holding each question's JSON exceeded DuckDB's 1 GB there.
    -- The question is parsed once for all its fields, after the join: the list, extracted
    -- before it, went into the join's hash table with the question (5M: out of memory)
    SELECT moment_id, question_id, title,
           f[1] AS question_created, f[2] AS question_updated,
           qcm, qcm_missing,
           bson_nn(f[3]) AS scale,
           bson_ref(f[4], '_id') AS single_id,
           bson_nn(f[5]) AS bool,
           bson_nn(f[6]) AS document,
           bson_nn(f[7]) AS text,
           bson_nn(f[8]) AS numeric
    FROM (SELECT p.moment_id, p.question_id, p.title, j.text AS qcm, j.missing AS qcm_missing,
                 json_extract(p.q, ['$.creation_date', '$.update_date', '$.scale_1_10_answer', '$.single_enum_answer',
                                    '$.boolean_answer', '$.document_answer', '$.text_answer', '$.numeric_answer']) AS f
          FROM pending p LEFT JOIN joined_choices j USING (moment_id, question_id))
)
-- answered_by and the values' BSON types are columns of a subquery, not aliases or macro
-- arguments reused in the same SELECT: DuckDB pastes those into every place that names them (each
-- WHEN of `CASE answered_by`, of a typed conversion), and planning the copies cost more than
-- running the statement in an incremental transform.
SELECT * EXCLUDE (single_text, single_type, scale_type, bool_type),
       CASE answered_by
           WHEN 'qcm_answers' THEN to_json(qcm)
           WHEN 'scale_1_10_answer' THEN coalesce(to_json(CAST(TRY_CAST(bson_to_integer_typed(scale, scale_type) AS BIGINT) AS VARCHAR)), json_array(scale))
           WHEN 'single_enum_answer' THEN to_json(CASE WHEN single_found THEN bson_text_or_empty_typed(single_text, single_type) ELSE single_id END)
           WHEN 'boolean_answer' THEN coalesce(to_json(CASE bson_to_boolean_typed(bool, bool_type) WHEN true THEN 'True' WHEN false THEN 'False' END), json_array(bool))
           WHEN 'document_answer' THEN document
           WHEN 'text_answer' THEN text
           WHEN 'numeric_answer' THEN numeric
       END AS answer
FROM (
    SELECT f.*, i.id IS NOT NULL AS single_found, json_extract(i.d, '$.text') AS single_text,
           bson_type(json_extract(i.d, '$.text')) AS single_type, bson_type(scale) AS scale_type, bson_type(bool) AS bool_type,
           CASE
               WHEN qcm IS NOT NULL AND qcm <> '' THEN 'qcm_answers'
               WHEN scale IS NOT NULL THEN 'scale_1_10_answer'
               WHEN single_id IS NOT NULL THEN 'single_enum_answer'
               WHEN bool IS NOT NULL THEN 'boolean_answer'
               WHEN document IS NOT NULL AND document <> CAST('""' AS JSON) THEN 'document_answer'
               WHEN text IS NOT NULL AND text <> CAST('""' AS JSON) THEN 'text_answer'
               WHEN numeric IS NOT NULL THEN 'numeric_answer'
           END AS answered_by
    FROM fields f LEFT JOIN moment_items i ON i.id = f.single_id);

CREATE OR REPLACE TEMP TABLE moment_answers AS
SELECT moment_id, source_id, source_collection, d FROM moment_item_answers
UNION ALL
SELECT moment_id, question_id, 'userquizzquestions',
       json_object('_id', question_id,
                   'creation_date', question_created,
                   'update_date', question_updated,
                   'user_logbook_moment_id', moment_id,
                   'question', title,
                   'answer', answer)
FROM moment_inline WHERE answer IS NOT NULL;

CREATE OR REPLACE TEMP TABLE moment_warnings AS
SELECT moment_id, status AS reason, question_id AS value FROM moment_questions WHERE status IS NOT NULL
UNION ALL
SELECT moment_id, 'answer_item_missing', unnest(qcm_missing) FROM moment_inline WHERE qcm_missing IS NOT NULL
UNION ALL
SELECT moment_id, 'answer_item_missing', single_id FROM moment_inline WHERE answered_by = 'single_enum_answer' AND NOT single_found;

CREATE OR REPLACE TEMP TABLE moment_outcomes AS
WITH logbooks AS (  -- the candidates' only: the other fields are read from those alone
    SELECT moment_id, _id, creation_date, update_date, bson_nn(f[1]) AS user, bson_nn(f[2]) AS day, bson_type(f[2]) AS day_type
    FROM (SELECT *, json_extract(doc, ['$.user', '$.day']) AS f
          FROM (SELECT *, bson_ref(json_extract(doc, '$.logbook'), '_id') AS moment_id FROM {src_coachinglogbooks})
          WHERE moment_id IN (SELECT id FROM moment_candidates))
),
chosen AS (  -- 4.5 step 2: with user and day first, then C11
    SELECT moment_id, bson_ref(user, '_id') AS user_id, day IS NOT NULL AS has_day, bson_to_date_typed(day, day_type, {timezone}) AS day
    FROM logbooks
    QUALIFY row_number() OVER (
        PARTITION BY moment_id
        ORDER BY (user IS NOT NULL AND day IS NOT NULL) DESC, update_date DESC NULLS LAST, creation_date DESC NULLS LAST, _id DESC
    ) = 1
),
users_logbook AS (
    SELECT user_id, day FROM {parent_users_logbook}
)
SELECT c.id,
       CASE
           WHEN NOT EXISTS (SELECT 1 FROM moment_questions mq WHERE mq.moment_id = c.id) THEN 'no_questions'
           WHEN NOT EXISTS (SELECT 1 FROM moment_answers a WHERE a.moment_id = c.id) THEN 'no_answers'
           WHEN ch.moment_id IS NULL THEN 'no_coachinglogbook'
           WHEN ch.user_id IS NULL OR NOT ch.has_day THEN 'no_user_or_day'
           WHEN ul.user_id IS NULL THEN 'no_users_logbook_match'
       END AS skip,
       ch.user_id, ch.day
FROM moment_candidates c
LEFT JOIN chosen ch ON ch.moment_id = c.id
LEFT JOIN users_logbook ul ON ul.user_id = ch.user_id AND ul.day = ch.day;
