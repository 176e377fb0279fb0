import os, pymongo, sys, json
# The withdrawal fields of every user, type-exact, before 003. usage: snapshot.py DB OUT.json
c = pymongo.MongoClient(os.environ["SOAK_SERVER"])
db = c[sys.argv[1]]; F = ("withdrawableBalance", "totalWithdrawn", "pendingWithdrawals")
from bson import json_util
open(sys.argv[2], "w").write(json_util.dumps({str(u["_id"]): {f: u[f] for f in F if f in u} for u in db.users.find({}, {f: 1 for f in F})}, json_options=json_util.CANONICAL_JSON_OPTIONS))
