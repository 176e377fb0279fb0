import pymongo, random, time, sys, json, datetime, os
# The application's production mix at a steady rate until a stop file appears, logging every
# acknowledged write that matters to the checker (inserts, deletes, users moved, and when).
# usage: writer.py DB RATE STOPFILE LOG [SEED]
c = pymongo.MongoClient(os.environ["SOAK_SERVER"])
db = c[sys.argv[1]]; rate = float(sys.argv[2]); stopfile = sys.argv[3]; logpath = sys.argv[4]
ids = [d["_id"] for d in db.users.find({}, {"_id": 1})]
random.seed(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
log = open(logpath, "w"); n = 0; t0 = time.time(); nxt = t0

while not os.path.exists(stopfile):
    r = int(os.environ.get("FORCE_OP", "-1")) if os.environ.get("FORCE_OP") else random.randrange(100); i = random.choice(ids); op = None; doc = None
    if r < 55:
        db.users.update_one({"_id": i}, {"$set": {"affiliateEarnings": random.randint(100, 5000000) / 100.0}}); op = "earnings"
    elif r < 67:
        res = db.users.insert_one({"name": "new", "affiliateEarnings": random.randint(100, 5000000) / 100.0, "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0})
        i = res.inserted_id; ids.append(i); op = "insert"
    elif r < 72:
        if db.users.delete_one({"_id": i}).deleted_count: op = "delete"
    elif r < 77:
        doc = db.users.find_one_and_update({"_id": i, "withdrawableBalance": {"$gt": 25}}, {"$set": {"pendingWithdrawals": 25}}, return_document=pymongo.ReturnDocument.AFTER)
        if doc: op = "moved"
    elif r < 80:
        doc = db.users.find_one_and_update({"_id": i, "withdrawableBalance": {"$ne": 0}, "totalWithdrawn": 0, "pendingWithdrawals": 0}, {"$set": {"withdrawableBalance": 0}}, return_document=pymongo.ReturnDocument.AFTER)
        if doc: op = "moved"
    else:
        db.users.update_one({"_id": i}, {"$set": {"lastSeen": datetime.datetime.utcnow()}}); op = "unrelated"
    n += 1
    if op:
        rec = {"t": int(time.time() * 1000), "id": str(i), "op": op}
        if doc: rec["fields"] = {k: doc.get(k) for k in ("withdrawableBalance", "totalWithdrawn", "pendingWithdrawals")}
        log.write(json.dumps(rec, default=str) + "\n")
    nxt += 1.0 / rate
    d = nxt - time.time()
    if d > 0: time.sleep(d)
    else: nxt = time.time()
log.close()
print("writes", n, "rate", n / (time.time() - t0))
