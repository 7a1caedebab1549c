"""Checks of tests/oracle_relations.py against the statements of MAPPING.md (3.14-3.32, 4, 5.5, 5.6)."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta

from bson import ObjectId

from oracle_relations import expected_relations

T0 = datetime(2024, 1, 10, 8, 30, 0)                    # naive = UTC
T1 = T0 + timedelta(hours=1)
_counter = itertools.count(0x500)


def oid() -> ObjectId:
    return ObjectId(f"{next(_counter):024x}")


def doc(**fields) -> dict:
    base = {"_id": oid(), "creation_date": T0, "update_date": T1}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def hx(document: dict) -> str:
    return str(document["_id"])


def user(**f):
    return doc(**{"firstname": "A", "lastname": "B", "email": "a@b.c", "role": "CUSTOMER", **f})


def quizz(**f):
    return doc(**{"name": "Q", "type": "QUIZZ_TYPE_ASSESSMENT", **f})


def question(**f):
    return doc(**{"title": "How?", "type": "QUIZZ_QUESTION_TYPE_TEXT", **f})


def event(**f):
    return doc(**{"name": "E", "__t": "webinar", "start_date": T0, "end_date": T1, **f})


def content(**f):
    return doc(**{"name": "C", "type": "ARTICLE", **f})


def period(**f):
    return doc(**{"number_of_days": 7, "order": 1, "status": "CURRENT", **f})


def day(period_doc, **f):
    return doc(**{"period": period_doc["_id"], "is_success": False, "date": T0, **f})


# --------------------------------------------------------------------------- 3.14 + C5 + C10

def test_quizzs_links_questions_shapes_duplicates_and_fk():
    q1, q2 = question(), question()
    unknown = oid()
    qz = quizz(questions=[q1["_id"], {"question": q2["_id"], "_id": oid()}, str(q1["_id"]).upper(),
                          42, {}, unknown])
    r = expected_relations({"quizzs": [qz], "quizzquestions": [q1, q2]})["quizzs_links_questions"]
    assert set(r.rows) == {(hx(qz), hx(q1)), (hx(qz), hx(q2))}
    assert r.rows[(hx(qz), hx(q1))] == {"quizz_id": hx(qz), "question_id": hx(q1),
                                        "created_at": T0, "updated_at": T1}
    assert sorted(r.warnings) == sorted([(hx(qz), "duplicate_in_source"),
                                         (hx(qz), "bad_reference"), (hx(qz), "bad_reference")])
    assert r.reject_list == [(hx(qz), "fk_missing:question_id")]
    assert r.rejects == {hx(qz): "fk_missing:question_id"}


def test_updated_at_falls_back_to_parent_creation_date():
    q1 = question()
    # a quizz without update_date is rejected from quizzs (C2) -> its rows fk_missing
    qz = quizz(questions=[q1["_id"]], update_date=None)
    r = expected_relations({"quizzs": [qz], "quizzquestions": [q1]})["quizzs_links_questions"]
    assert r.rows == {} and r.reject_list == [(hx(qz), "fk_missing:quizz_id")]
    # users_contents_reads from a valid content: updated_at = update_date
    u = user()
    c = content(viewed_by=[{"user": u["_id"], "_id": oid()}, u["_id"]])
    r = expected_relations({"contents": [c], "users": [u]})["users_contents_reads"]
    assert r.rows == {(hx(c), hx(u)): {"content_id": hx(c), "user_id": hx(u),
                                       "created_at": T0, "updated_at": T1}}
    assert r.warnings == [(hx(c), "duplicate_in_source")]


def test_empty_or_missing_arrays_give_no_rows():
    qz1, qz2 = quizz(questions=[]), quizz()
    r = expected_relations({"quizzs": [qz1, qz2]})["quizzs_links_questions"]
    assert r.rows == {} and r.reject_list == [] and r.warnings == []


# --------------------------------------------------------------------------- 3.16 user_events

def test_user_events_created_at_from_element_date():
    e1, e2, e3 = event(), event(), event()
    registered = T0 - timedelta(days=3)
    u = user(registered_events=[
        {"_id": oid(), "event": e1["_id"], "date": registered},
        e2["_id"],                                          # plain ObjectId: parent creation_date
        {"_id": oid(), "event": e1["_id"], "date": T0 - timedelta(days=1)},  # duplicate: first wins
        {"_id": e3["_id"]},                                 # no `event` key -> `_id`
    ])
    r = expected_relations({"users": [u], "events": [e1, e2, e3]})["user_events"]
    assert r.rows[(hx(u), hx(e1))]["created_at"] == registered
    assert r.rows[(hx(u), hx(e1))]["updated_at"] == T1
    assert r.rows[(hx(u), hx(e2))]["created_at"] == T0
    assert (hx(u), hx(e3)) in r.rows and len(r.rows) == 3
    assert r.warnings == [(hx(u), "duplicate_in_source")]


def test_user_events_rejected_event_is_fk_missing():
    bad = event(start_date=None)                            # rejected from events (not_null)
    u = user(registered_events=[bad["_id"]])
    r = expected_relations({"users": [u], "events": [bad]})["user_events"]
    assert r.rows == {} and r.reject_list == [(hx(u), "fk_missing:event_id")]


# --------------------------------------------------------------------------- 3.17 users_targets

def test_users_targets_three_types_and_per_type_duplicates():
    t1, t2 = doc(name="T1"), doc(name="T2")
    u = user(targets=[t1["_id"], {"_id": t2["_id"]}, t1["_id"]],
             specificity_targets=[t1["_id"]], health_targets=["nope"], update_date=None)
    # a user without update_date is rejected from users -> rows fk_missing:user_id
    r = expected_relations({"users": [u], "targets": [t1, t2]})["users_targets"]
    assert r.rows == {}
    assert r.reject_list == [(hx(u), "fk_missing:user_id")] * 3
    u = user(targets=[t1["_id"], {"_id": t2["_id"]}, t1["_id"]],
             specificity_targets=[t1["_id"]], health_targets=["nope"])
    r = expected_relations({"users": [u], "targets": [t1, t2]})["users_targets"]
    assert set(r.rows) == {(hx(u), hx(t1), "basic"), (hx(u), hx(t2), "basic"),
                           (hx(u), hx(t1), "specificity")}
    assert r.rows[(hx(u), hx(t1), "specificity")] == {
        "user_id": hx(u), "target_id": hx(t1), "type": "specificity",
        "created_at": T0, "updated_at": T1}
    assert sorted(r.warnings) == [(hx(u), "bad_reference"), (hx(u), "duplicate_in_source")]


# --------------------------------------------------------------------------- 3.27, 3.31, 3.32

def test_users_quizzs_links_questions():
    uqq1, uqq2 = doc(), doc()
    uq = doc(questions=[{"question": uqq1["_id"]}, uqq2["_id"], oid()], update_date=None)
    # users_quizzs has no NOT NULL besides base columns: drop update_date -> rejected parent
    r = expected_relations({"userquizzs": [uq], "userquizzquestions": [uqq1, uqq2]})
    assert r["users_quizzs_links_questions"].reject_list == [
        (hx(uq), "fk_missing:user_quizz_id")] * 3
    uq = doc(questions=[{"question": uqq1["_id"]}, uqq2["_id"], oid()])
    r = expected_relations({"userquizzs": [uq], "userquizzquestions": [uqq1, uqq2]})
    t = r["users_quizzs_links_questions"]
    assert set(t.rows) == {(hx(uq), hx(uqq1)), (hx(uq), hx(uqq2))}
    assert t.reject_list == [(hx(uq), "fk_missing:user_quizz_question_id")]


def test_days_links_and_rejected_day():
    p = period()
    c1 = content()
    uq = doc()
    good = day(p, contents=[{"content": c1["_id"]}, c1["_id"]], main_logbooks=[{"logbook": uq["_id"]}])
    bad = day(p, is_success=None, contents=[c1["_id"]], main_logbooks=[uq["_id"]])  # rejected day
    r = expected_relations({"periods": [p], "contents": [c1], "userquizzs": [uq], "days": [good, bad]})
    dcl, dll = r["days_contents_links"], r["days_logbooks_links"]
    assert set(dcl.rows) == {(hx(good), hx(c1))}
    assert dcl.warnings == [(hx(good), "duplicate_in_source")]
    assert dcl.reject_list == [(hx(bad), "fk_missing:day_id")]
    assert dll.rows == {(hx(good), hx(uq)): {"day_id": hx(good), "logbook_id": hx(uq),
                                             "created_at": T0, "updated_at": T1}}
    assert dll.reject_list == [(hx(bad), "fk_missing:day_id")]


# --------------------------------------------------------------------------- 3.20 users_logbook

def test_users_logbook_groups_by_user_and_local_day():
    u, ghost = user(), oid()
    midnight = datetime(2024, 3, 6, 23, 0)                 # 7 March in Paris
    a = doc(user=u["_id"], day=midnight, creation_date=T0, update_date=T0 + timedelta(days=2))
    b = doc(user={"_id": u["_id"]}, day=midnight, creation_date=T0 + timedelta(days=1), update_date=None)
    c = doc(user=str(u["_id"]), day=midnight + timedelta(days=1))
    no_user1, no_user2 = doc(day=midnight), doc(user=12, day=midnight)
    no_day = doc(user=u["_id"])
    unknown = doc(user=ghost, day=midnight)
    r = expected_relations({"users": [u], "coachinglogbooks": [a, b, c, no_user1, no_user2, no_day, unknown]})
    t = r["users_logbook"]
    assert t.rows == {
        (hx(u), date(2024, 3, 7)): {"user_id": hx(u), "day": date(2024, 3, 7),
                                    "created_at": T0 + timedelta(days=1),
                                    "updated_at": T0 + timedelta(days=2)},
        (hx(u), date(2024, 3, 8)): {"user_id": hx(u), "day": date(2024, 3, 8),
                                    "created_at": T0, "updated_at": T1},
    }
    assert t.skips == {hx(no_user1): "no_user", hx(no_user2): "no_user"}
    assert t.rejects == {hx(no_day): "not_null:day", hx(unknown): "fk_missing:user_id"}
    # UTC reproduces R1/R2 (C8)
    utc = expected_relations({"users": [u], "coachinglogbooks": [a]}, tz="UTC")["users_logbook"]
    assert set(utc.rows) == {(hx(u), date(2024, 3, 6))}


def test_users_logbook_group_without_update_date_rejected():
    u = user()
    a = doc(user=u["_id"], day="2024-03-07", update_date=None)
    t = expected_relations({"users": [u], "coachinglogbooks": [a]})["users_logbook"]
    assert t.rows == {} and t.rejects == {hx(a): "not_null:updated_at"}


# --------------------------------------------------------------------------- 3.21 menu_recipes

def test_menu_recipes_union_dedup_and_latest_timestamps():
    menu = event(__t="menu")
    r1, r2 = doc(name="R1"), doc(name="R2")
    m1 = doc(menu=menu["_id"], recipe=r1["_id"], creation_date=T0, update_date=T1)
    m2 = doc(menu={"_id": menu["_id"]}, recipe=r1["_id"], creation_date=T0 + timedelta(days=1),
             update_date=T0 + timedelta(days=1))
    # same _id in both collections: the one with the greater update_date wins (C11)
    old = doc(menu=menu["_id"], recipe=r2["_id"], update_date=T1)
    new = dict(old, recipe=oid(), update_date=T1 + timedelta(days=5))
    no_recipe = doc(menu=menu["_id"], recipe=None)
    r = expected_relations({"events": [menu], "recipes": [r1, r2],
                            "menurecipes": [m1, m2, old, no_recipe], "menu_recipes": [new]})
    t = r["menu_recipes"]
    assert t.rows == {(hx(menu), hx(r1)): {"menu_id": hx(menu), "recipe_id": hx(r1),
                                           "created_at": T0 + timedelta(days=1),
                                           "updated_at": T0 + timedelta(days=1)}}
    assert t.rejects == {hx(new): "fk_missing:recipe_id", hx(no_recipe): "not_null:recipe_id"}


# --------------------------------------------------------------------------- section 4

def worked_example():
    """4.9: user X, three coaching logbooks of 7 March (Paris)."""
    X = user()
    the_day = datetime(2024, 3, 6, 23, 0)
    tpl = {n: question(title=f"Question {n}") for n in range(1, 6)}
    q = {n: doc(quizz_question=tpl[n]["_id"]) for n in range(1, 6)}
    q[2]["scale_1_10_answer"] = 7
    oui = doc(text="Oui")
    q[3]["single_enum_answer"] = oui["_id"]
    q[4]["text_answer"] = "Salade"
    q[5]["boolean_answer"] = False
    pain, cafe, empty = (doc(text=t, userQuizzQuestion=q[1]["_id"]) for t in ("pain", "café", ""))
    q6 = doc(quizzQuestion=tpl[1]["_id"])                   # UQ-C: nothing answered
    uqa = doc(type="QUIZZ_TYPE_LOGBOOK", name="Petit-déjeuner", questions=[q[1]["_id"], q[2]["_id"], q[3]["_id"]])
    uqb = doc(type="QUIZZ_TYPE_LOGBOOK", name="Dîner", questions=[{"question": q[4]["_id"]}, q[5]["_id"]])
    uqc = doc(type="QUIZZ_TYPE_LOGBOOK", name="Collation", questions=[q6["_id"]])
    cls = [doc(user=X["_id"], day=the_day, logbook=uq["_id"], update_date=T1 + timedelta(minutes=i))
           for i, uq in enumerate((uqa, uqb, uqc))]
    docs = {"users": [X], "quizzquestions": list(tpl.values()),
            "userquizzquestions": [*q.values(), q6], "items": [oui, pain, cafe, empty],
            "userquizzs": [uqa, uqb, uqc], "coachinglogbooks": cls}
    return docs, X, q, (pain, cafe), (uqa, uqb, uqc), cls


def test_worked_example_4_9():
    docs, X, q, (pain, cafe), (uqa, uqb, uqc), cls = worked_example()
    r = expected_relations(docs)
    key = (hx(X), date(2024, 3, 7))
    assert r["users_logbook"].rows == {key: {"user_id": hx(X), "day": date(2024, 3, 7),
                                             "created_at": T0, "updated_at": T1 + timedelta(minutes=2)}}
    m = r["users_logbooks_moments"]
    assert m.rows == {
        hx(uqa): {"id": hx(uqa), "created_at": T0, "updated_at": T1, "user_logbook_key": key,
                  "type": "Petit-déjeuner"},
        hx(uqb): {"id": hx(uqb), "created_at": T0, "updated_at": T1, "user_logbook_key": key,
                  "type": "Dîner"},
    }
    assert m.skips == {hx(uqc): "no_answers"} and m.rejects == {} and m.warnings == []
    d = r["users_logbooks_moments_details"]
    got = {k: (v["user_logbook_moment_id"], v["question"], v["answer"]) for k, v in d.rows.items()}
    assert got == {
        hx(pain): (hx(uqa), "Question 1", "pain"),
        hx(cafe): (hx(uqa), "Question 1", "café"),
        hx(q[2]): (hx(uqa), "Question 2", "7"),
        hx(q[3]): (hx(uqa), "Question 3", "Oui"),
        hx(q[4]): (hx(uqb), "Question 4", "Salade"),
        hx(q[5]): (hx(uqb), "Question 5", "False"),
    }
    assert d.rows[hx(pain)]["created_at"] == T0 and d.rows[hx(q[5])]["updated_at"] == T1
    # R1's UTC day rule: the users_logbook row and the moment key move together
    utc = expected_relations(docs, tz="UTC")
    assert utc["users_logbooks_moments"].rows[hx(uqa)]["user_logbook_key"] == (hx(X), date(2024, 3, 6))


def test_moment_skip_reasons_in_order():
    X = user()
    tpl = question(title=None)                              # missing title -> ""
    def answered(**f):
        return doc(quizz_question=tpl["_id"], numeric_answer=72.5, **f)
    def lb(**f):
        return doc(**{"type": "QUIZZ_TYPE_LOGBOOK", "name": "M", **f})
    qa, qb, qc, qd, qe = (answered() for _ in range(5))
    no_q = lb(questions=[])
    no_ans = lb(questions=[doc(quizz_question=tpl["_id"])["_id"]])    # question_missing, too
    no_cl = lb(questions=[qa["_id"]])
    no_day = lb(questions=[qb["_id"]])
    no_match = lb(questions=[qc["_id"]])
    nameless = lb(questions=[qd["_id"]], name=None)
    ok = lb(questions=[qe["_id"], oid()])
    other = doc(type="QUIZZ_TYPE_ASSESSMENT", name="M", questions=[qe["_id"]])
    d1 = datetime(2024, 3, 6, 23, 0)
    cls = [doc(user=X["_id"], logbook=no_day["_id"]),
           doc(user=oid(), day=d1, logbook=no_match["_id"]),
           doc(user=X["_id"], day=d1, logbook=nameless["_id"]),
           doc(user=X["_id"], day=d1, logbook=ok["_id"]),
           doc(logbook=ok["_id"], update_date=T1 + timedelta(days=9))]  # newer but no user: not chosen
    r = expected_relations({"users": [X], "quizzquestions": [tpl], "coachinglogbooks": cls,
                            "userquizzquestions": [qa, qb, qc, qd, qe],
                            "userquizzs": [no_q, no_ans, no_cl, no_day, no_match, nameless, ok, other]})
    m, d = r["users_logbooks_moments"], r["users_logbooks_moments_details"]
    assert m.skips == {hx(no_q): "no_questions", hx(no_ans): "no_answers",
                       hx(no_cl): "no_coachinglogbook", hx(no_day): "no_user_or_day",
                       hx(no_match): "no_users_logbook_match"}
    assert m.rejects == {hx(nameless): "not_null:type"}
    assert set(m.rows) == {hx(ok)}
    assert sorted(m.warnings) == [(hx(no_ans), "question_missing"), (hx(ok), "question_missing")]
    assert d.rows == {hx(qe): {"id": hx(qe), "created_at": T0, "updated_at": T1,
                               "user_logbook_moment_id": hx(ok), "question": "", "answer": "72.5"}}


def test_inline_answer_precedence_and_qcm():
    X = user()
    tpl = question()
    a1, a2, blank = doc(text="Riz"), doc(text="Pâtes"), doc(text="")
    missing = oid()
    q1 = doc(quizz_question=tpl["_id"], qcm_answers=[a1["_id"], blank["_id"], missing, a2["_id"]],
             scale_1_10_answer=3)
    q2 = doc(quizz_question=tpl["_id"], qcm_answers=[blank["_id"]], scale_1_10_answer=4.5,
             boolean_answer=True)                           # empty qcm join -> next: scale, 4.5 -> 5
    q3 = doc(quizz_question=tpl["_id"], document_answer="", text_answer="", numeric_answer=72,
             comment="not an answer")
    item_only = doc(quizz_question=tpl["_id"], text_answer="ignored")
    late = doc(text="b", userQuizzQuestion=item_only["_id"], creation_date=T0 + timedelta(days=1))
    early = doc(text="a", userQuizzQuestion=item_only["_id"])
    uq = doc(type="QUIZZ_TYPE_LOGBOOK", name="M",
             questions=[q1["_id"], q2["_id"], q3["_id"], item_only["_id"]])
    cl = doc(user=X["_id"], day="2024-03-07", logbook=uq["_id"])
    r = expected_relations({"users": [X], "quizzquestions": [tpl], "coachinglogbooks": [cl],
                            "items": [a1, a2, blank, late, early],
                            "userquizzquestions": [q1, q2, q3, item_only], "userquizzs": [uq]})
    d = r["users_logbooks_moments_details"]
    answers = {k: v["answer"] for k, v in d.rows.items()}
    assert answers == {hx(q1): f"Riz, {missing}, Pâtes", hx(q2): "5", hx(q3): "72",
                       hx(early): "a", hx(late): "b"}
    assert r["users_logbooks_moments"].warnings == [(hx(uq), "answer_item_missing")]
