#!/bin/sh
# Create meterd's meters in Stripe: STRIPE_SECRET_KEY in the environment. Needs curl and python3.
set -eu
here=$(dirname "$0")
python3 -c '
import json, sys, urllib.parse
for m in json.load(open(sys.argv[1])):
    print(urllib.parse.urlencode(m))' "$here/meters.json" |
while IFS= read -r form; do
    curl -sS https://api.stripe.com/v1/billing/meters -u "$STRIPE_SECRET_KEY:" -d "$form"
    echo
done
