#!/bin/sh
# Create meterd's billable metrics in Lago: LAGO_API_URL (e.g. https://api.getlago.com) and
# LAGO_API_KEY in the environment. Needs curl and python3. A metric that exists already is
# answered 422 value_already_exist for its code, and left as it is.
set -eu
here=$(dirname "$0")
python3 -c 'import json,sys; [print(json.dumps({"billable_metric": m})) for m in json.load(open(sys.argv[1]))]' \
    "$here/billable_metrics.json" |
while IFS= read -r body; do
    curl -sS -X POST "$LAGO_API_URL/api/v1/billable_metrics" \
        -H "Authorization: Bearer $LAGO_API_KEY" -H "Content-Type: application/json" -d "$body"
    echo
done
