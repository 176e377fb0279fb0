import os, pymongo, sys, json, math
# Independent checker of a soak trial: what every user must hold, from the withdrawal fields as
# they were before 003 (snapshot.py), the writer's log and the rounding rule written here again;
# it reads no state of the engine but the convergence point. usage: check.py DB BEFORE.json LOG
from decimal import Decimal, ROUND_HALF_EVEN
from bson.decimal128 import Decimal128
from bson import json_util
# Independent checker: what every user must hold, from the data before 003 and the writer's log.
c = pymongo.MongoClient(os.environ["SOAK_SERVER"])
db = c[sys.argv[1]]; before = json_util.loads(open(sys.argv[2]).read()); log = [json.loads(l) for l in open(sys.argv[3])]
rec = db.migrations.find_one({"name": "003_migrate_existing_user_balances"}) or {}
if rec.get("status") != "completed" or "convergedAt" not in rec.get("result", {}):
    print("003 is", rec.get("status"), "-", rec.get("error", "no convergence point")[:300]); sys.exit(1)
T = rec["result"]["convergedAt"]["wallTime"]; Tms = int(T.timestamp() * 1000)
print("status", rec["status"], "convergedAt", T)
F = ("withdrawableBalance", "totalWithdrawn", "pendingWithdrawals")
moved, deleted, last = {}, set(), {}
for e in log:
    last[e["id"]] = e["t"]
    if e["op"] == "moved": moved[e["id"]] = json_util.loads(json.dumps(e["fields"]))
    if e["op"] == "delete": deleted.add(e["id"])
    if e["op"] == "insert": before.setdefault(e["id"], {"withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0})
def half(v):
    if v is None: return None
    if isinstance(v, bool): return "invalid"
    if isinstance(v, Decimal128):
        d = v.to_decimal()
        if d.is_nan() or d.is_infinite() or d < 0 or d > Decimal(10**15): return "invalid"
        if d == 0: return None
        return Decimal128((d / 2).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))
    if isinstance(v, (int, float)):
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)): return "invalid"
        if v < 0 or v > 10**15: return "invalid"
        if v == 0: return None
        d = Decimal(repr(float(v))) if isinstance(v, float) else Decimal(v)
        return float((d / 2).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))
    return "invalid"
def same(a, b):
    return type(a) == type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))
wrong, checked, skipped = [], 0, 0
for u in db.users.find({}):
    k = str(u["_id"])
    if k in deleted: wrong.append(("deleted but present", k)); continue
    got = {f: u.get(f) for f in F if f in u}
    if k in moved:
        exp = moved[k]
        if any(not (same(got.get(f), exp.get(f)) or (isinstance(exp.get(f), str) and str(got.get(f)) == exp.get(f))) for f in F): wrong.append(("moved", k, got, exp))
        checked += 1; continue
    if last.get(k, 0) >= Tms: skipped += 1; continue
    base = before[k]; exp = dict(base)
    untouched = all(base.get(f) in (0, None) and not isinstance(base.get(f), bool) and f in base for f in F) or all(base.get(f, 0) == 0 for f in F)
    if untouched:
        h = half(u.get("affiliateEarnings"))
        if h not in (None, "invalid"): exp["withdrawableBalance"] = h
        for f in F: exp.setdefault(f, 0)
    if any(not same(got.get(f), exp.get(f)) for f in F if f in exp) or set(got) != set(exp):
        wrong.append(("value", k, got, exp, u.get("affiliateEarnings")))
    checked += 1
print("checked", checked, "left to the application (written at or after T)", skipped, "moved", len(moved), "wrong", len(wrong))
for w in wrong[:5]: print(" ", w)
sys.exit(1 if wrong else 0)
