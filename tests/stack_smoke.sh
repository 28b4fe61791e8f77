#!/usr/bin/env bash
# Smoke test of scripts/wordpress-stack and the companion plugin wordpress/wp-sync-bridge.php,
# with curl against a throwaway stack (its own state directory and ports).
#
#   tests/stack_smoke.sh            (ports: SMOKE_DB_PORT=33316, SMOKE_WP_PORT=8796)
#
# Exits non-zero on the first failure. Needs curl and python3 (for reading JSON/XML answers).
# `make test` runs it through tests/test_stack_smoke.py, on the suite's ports + 50.

set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK="$REPO_DIR/scripts/wordpress-stack"
# The version the plugin file declares: what its status must report, over REST and XML-RPC.
PLUGIN_VERSION=$(sed -n "s/^define( 'WPSB_PLUGIN_VERSION', '\(.*\)' );$/\1/p" "$REPO_DIR/wordpress/wp-sync-bridge.php")
[ -n "$PLUGIN_VERSION" ] || { echo "no WPSB_PLUGIN_VERSION in wordpress/wp-sync-bridge.php" >&2; exit 1; }
TMP_DIR=$(mktemp -d /tmp/wpsb-smoke.XXXXXX)
chmod 755 "$TMP_DIR" # mariadbd runs as mysql and must reach its data directory
export WPSB_STACK_DIR="$TMP_DIR/stack"
export WPSB_DB_PORT=${SMOKE_DB_PORT:-33316}
export WPSB_WP_PORT=${SMOKE_WP_PORT:-8796}
NS=wp-sync-bridge/v1
PASSED=0

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() {
    PASSED=$((PASSED + 1))
    echo "ok $PASSED - $*"
}

cleanup() {
    local rc=$?
    "$STACK" purge >/dev/null 2>&1 || true
    rm -rf "$TMP_DIR"
    if ((rc != 0)); then
        echo "smoke test FAILED (rc=$rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT

# j EXPR: evaluate a Python expression over the JSON on stdin (bound to d), print the result.
j() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1])
print(json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else v)
' "$1"
}

# expect NAME ACTUAL WANTED
expect() {
    [[ $2 == "$3" ]] || fail "$1: got [$2], wanted [$3]${BODY:+ (body: $BODY)}"
}

# api METHOD PATH [JSON]: sets CODE and BODY (authenticated with the application password).
api() {
    local out
    if [[ $# -ge 3 ]]; then
        out=$(curl -sS -u "$AUTH" -X "$1" -H 'Content-Type: application/json' --data-binary "$3" \
            -w '\n%{http_code}' "$WPSB_WP_URL/wp-json/$NS$2")
    else
        out=$(curl -sS -u "$AUTH" -X "$1" -w '\n%{http_code}' "$WPSB_WP_URL/wp-json/$NS$2")
    fi
    CODE=${out##*$'\n'}
    BODY=${out%$'\n'*}
}

upsert() { api POST /users/upsert "$1"; }

mail_count() { if [[ -f $WPSB_WP_MAIL_LOG ]]; then wc -l <"$WPSB_WP_MAIL_LOG"; else echo 0; fi; }

mail_count_to() { grep -c "\"to\":\[\"$1\"\]" "$WPSB_WP_MAIL_LOG" || true; }

sql() { mariadb --no-defaults --socket="$WPSB_DB_SOCKET" --user=root -N -B "$WPSB_DB_NAME" -e "$1"; }

# Sum of MariaDB's write statement counters (global).
db_writes() {
    mariadb --no-defaults --socket="$WPSB_DB_SOCKET" --user=root -N -B -e \
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_insert','Com_update','Com_delete','Com_replace','Com_insert_select','Com_update_multi','Com_delete_multi')" |
        awk '{s += $2} END {print s}'
}

stack_processes() { pgrep -af -- "$WPSB_STACK_DIR" || true; }

load_env() {
    set -a
    # shellcheck disable=SC1091
    . "$WPSB_STACK_DIR/env"
    set +a
    AUTH="$WPSB_WP_USER:$WPSB_WP_APP_PASSWORD"
}

now_ms() { date +%s%3N; }

# xmlrpc METHOD STRUCT_XML [PASSWORD]: POST a call with curl; prints the answer as JSON
# ({"fault": {...}} for a fault).
xmlrpc() {
    local pass=${3:-$WPSB_WP_APP_PASSWORD} xml
    xml="<?xml version=\"1.0\"?><methodCall><methodName>$1</methodName><params>
<param><value><int>1</int></value></param>
<param><value><string>$WPSB_WP_USER</string></value></param>
<param><value><string>$pass</string></value></param>
<param><value>$2</value></param></params></methodCall>"
    curl -sS -H 'Content-Type: text/xml' --data-binary "$xml" "$WPSB_WP_URL/xmlrpc.php" | python3 -c '
import json, sys, xmlrpc.client
try:
    (v,), _ = xmlrpc.client.loads(sys.stdin.read())
    print(json.dumps(v))
except xmlrpc.client.Fault as f:
    print(json.dumps({"fault": {"code": f.faultCode, "string": f.faultString}}))
'
}

# ------------------------------------------------------------------------------------------
echo "# stack in $WPSB_STACK_DIR, ports $WPSB_DB_PORT/$WPSB_WP_PORT"

t0=$(now_ms)
"$STACK" up >"$TMP_DIR/up1.out" 2>"$TMP_DIR/up1.err" || { cat "$TMP_DIR/up1.err" >&2; fail "first up"; }
t1=$(now_ms)
ok "first up in $((t1 - t0)) ms"
load_env
expect "env url" "$WPSB_WP_URL" "http://127.0.0.1:$WPSB_WP_PORT"
expect "env stack dir" "$WPSB_STACK_DIR" "$TMP_DIR/stack"
for k in WPSB_WP_URL WPSB_WP_USER WPSB_WP_APP_PASSWORD WPSB_WP_ADMIN_PASSWORD WPSB_WP_MAIL_LOG \
    WPSB_DB_PORT WPSB_DB_SOCKET WPSB_DB_NAME WPSB_DB_USER WPSB_DB_PASSWORD WPSB_STACK_DIR \
    WPSB_WP_LINE WPSB_WP_VERSION; do
    grep -q "^$k=." "$TMP_DIR/up1.out" || fail "up did not print $k"
done
cmp -s "$TMP_DIR/up1.out" <("$STACK" env) || fail "env differs from what up printed"
ok "up prints the environment; env prints the same"

"$STACK" status >/dev/null || fail "status should exit 0 while running"
t0=$(now_ms)
"$STACK" up >"$TMP_DIR/up2.out" 2>/dev/null || fail "second up"
t1=$(now_ms)
cmp -s "$TMP_DIR/up1.out" "$TMP_DIR/up2.out" || fail "second up printed another environment"
((t1 - t0 < 2000)) || fail "up while running took $((t1 - t0)) ms"
ok "up while running is quick ($((t1 - t0)) ms) and prints the same env"

# --- REST basics --------------------------------------------------------------------------
api GET /status
expect "status code" "$CODE" 200
expect "plugin_version" "$(j 'd["plugin_version"]' <<<"$BODY")" "$PLUGIN_VERSION"
expect "api_version" "$(j 'd["api_version"]' <<<"$BODY")" 2
expect "caller is the administrator" "$(j 'd["caller"]["is_administrator"]' <<<"$BODY")" true
expect "caller lacks nothing" "$(j 'd["caller"]["missing_capabilities"]' <<<"$BODY")" "[]"
# The version of the line the stack was started with (WPSB_WP_LINE: 6.1 or 6.8).
expect "wordpress_version" "$(j 'd["wordpress_version"]' <<<"$BODY")" "$WPSB_WP_VERSION"
[[ $WPSB_WP_VERSION == "$WPSB_WP_LINE".* ]] || fail "WordPress $WPSB_WP_VERSION is not of line $WPSB_WP_LINE"
expect "php_version" "$(j 'd["php_version"][:2]' <<<"$BODY")" 8.
ok "GET status"

code=$(curl -sS -o /dev/null -w '%{http_code}' "$WPSB_WP_URL/wp-json/$NS/status")
expect "anonymous status" "$code" 401
code=$(curl -sS -o /dev/null -w '%{http_code}' -u "admin:wrongwrongwrongwrongwron" "$WPSB_WP_URL/wp-json/$NS/status")
expect "bad application password" "$code" 401
ok "anonymous and wrong password are refused with 401"

api GET /roles
expect "roles code" "$CODE" 200
expect "customer role" "$(j '{"slug": "customer", "name": "Customer"} in d["roles"]' <<<"$BODY")" true
expect "subscriber role" "$(j '{"slug": "subscriber", "name": "Subscriber"} in d["roles"]' <<<"$BODY")" true
expect "bridge role" "$(j '{"slug": "wpsb_bridge", "name": "WP Sync Bridge"} in d["roles"]' <<<"$BODY")" true
ok "GET roles includes customer and the plugin's wpsb_bridge role"

# --- create, repeat, replay ---------------------------------------------------------------
expect "mail log empty after install" "$(mail_count)" 0
ALICIA='{"email":"Alicia@Example.com","first_name":"Alicia","last_name":"Smith",
 "meta":{"city":"Rome","score":5,"vip":true,"langs":["it","en"]},
 "tags":["lead","vip"],"tags_key":"customerly_tags",
 "contact_id":"cust-alicia","contact_id_key":"customerly_contact_id",
 "role":"customer","send_notification":true,"request_id":"req-alicia-1"}'
upsert "$ALICIA"
expect "create code" "$CODE" 200
expect "create outcome" "$(j 'd["outcome"]' <<<"$BODY")" created
expect "create created" "$(j 'd["created"]' <<<"$BODY")" true
expect "create replayed" "$(j 'd["replayed"]' <<<"$BODY")" false
expect "create role" "$(j 'd["role"]' <<<"$BODY")" customer
expect "create warnings" "$(j 'd["warnings"]' <<<"$BODY")" "[]"
ALICIA_ID=$(j 'd["user_id"]' <<<"$BODY")
expect "one mail after create" "$(mail_count)" 1
expect "mail to alicia" "$(mail_count_to Alicia@Example.com)" 1
ok "upsert creates a user and sends exactly one notification"

w0=$(db_writes)
upsert "${ALICIA/req-alicia-1/req-alicia-2}"
w1=$(db_writes)
expect "repeat code" "$CODE" 200
expect "repeat outcome" "$(j 'd["outcome"]' <<<"$BODY")" unchanged
expect "repeat changed" "$(j 'd["changed"]' <<<"$BODY")" "[]"
expect "repeat user" "$(j 'd["user_id"]' <<<"$BODY")" "$ALICIA_ID"
expect "repeat created" "$(j 'd["created"]' <<<"$BODY")" false
expect "no mail on repeat" "$(mail_count)" 1
expect "database writes on repeat" "$((w1 - w0))" 0
ok "an identical upsert is unchanged, sends no mail and writes nothing to the database"

upsert "$ALICIA"
expect "replay outcome" "$(j 'd["outcome"]' <<<"$BODY")" created
expect "replay created" "$(j 'd["created"]' <<<"$BODY")" true
expect "replay replayed" "$(j 'd["replayed"]' <<<"$BODY")" true
expect "replay user" "$(j 'd["user_id"]' <<<"$BODY")" "$ALICIA_ID"
expect "no mail on replay" "$(mail_count)" 1
ok "a repeated request_id reports created+replayed without a second mail"

upsert '{"email":"alicia@example.com","first_name":"Ali","meta":{"city":"Milan","score":5},"tags":["lead"],"tags_key":"customerly_tags"}'
expect "update outcome" "$(j 'd["outcome"]' <<<"$BODY")" updated
expect "update changed" "$(j 'sorted(d["changed"])' <<<"$BODY")" '["first_name", "meta.city", "tags"]'
expect "no mail on update" "$(mail_count)" 1
ok "an update changes and reports only the fields that differ"

# --- lookup -------------------------------------------------------------------------------
api GET "/users/lookup?email=aLiCiA@EXAMPLE.com&meta_keys=city,score,vip,langs,nope&tags_key=customerly_tags&contact_id_key=customerly_contact_id"
expect "lookup code" "$CODE" 200
expect "lookup id" "$(j 'd["user"]["id"]' <<<"$BODY")" "$ALICIA_ID"
expect "lookup first_name" "$(j 'd["user"]["first_name"]' <<<"$BODY")" Ali
expect "lookup meta" "$(j 'd["user"]["meta"]' <<<"$BODY")" '{"city": "Milan", "score": "5", "vip": "1", "langs": ["it", "en"], "nope": null}'
expect "lookup tags" "$(j 'd["user"]["tags"]' <<<"$BODY")" '["lead"]'
expect "lookup contact_id" "$(j 'd["user"]["contact_id"]' <<<"$BODY")" cust-alicia
expect "lookup roles" "$(j 'd["user"]["roles"]' <<<"$BODY")" '["customer"]'
ok "lookup by mixed-case email returns the user with meta, tags and contact ID"

api GET "/users/lookup?contact_id=cust-alicia&contact_id_key=customerly_contact_id"
expect "lookup by contact id" "$(j 'd["user"]["id"]' <<<"$BODY")" "$ALICIA_ID"
api GET "/users/lookup?email=nobody@example.com"
expect "lookup miss" "$BODY" '{"user":null}'
api GET "/users/lookup"
expect "lookup without args" "$CODE" 400
expect "lookup without args code" "$(j 'd["code"]' <<<"$BODY")" wpsb_invalid_args
ok "lookup by contact ID, a miss, and missing arguments"

api GET "/users/lookup?email=malicia@example.com"
expect "malicia absent" "$BODY" '{"user":null}'
upsert '{"email":"malicia@example.com"}'
expect "malicia created" "$(j 'd["outcome"]' <<<"$BODY")" created
MALICIA_ID=$(j 'd["user_id"]' <<<"$BODY")
[[ $MALICIA_ID != "$ALICIA_ID" ]] || fail "malicia was matched to alicia"
api GET "/users/lookup?email=alicia@example.com"
expect "alicia lookup" "$(j 'd["user"]["id"]' <<<"$BODY")" "$ALICIA_ID"
api GET "/users/lookup?email=malicia@example.com"
expect "malicia lookup" "$(j 'd["user"]["id"]' <<<"$BODY")" "$MALICIA_ID"
api GET "/users/lookup?email=licia@example.com"
expect "substring lookup" "$BODY" '{"user":null}'
ok "alicia@ and malicia@ are different users; no substring matches"

upsert '{"email":"a+b@example.com","first_name":"Plus"}'
expect "plus created" "$(j 'd["outcome"]' <<<"$BODY")" created
PLUS_ID=$(j 'd["user_id"]' <<<"$BODY")
api GET "/users/lookup?email=a%2Bb@example.com"
expect "plus lookup" "$(j 'd["user"]["id"]' <<<"$BODY")" "$PLUS_ID"
expect "plus email" "$(j 'd["user"]["email"]' <<<"$BODY")" "a+b@example.com"
upsert '{"email":"A+B@example.com","first_name":"Plus"}'
expect "plus repeat" "$(j 'd["outcome"]' <<<"$BODY")" unchanged
ok "a + email is created, found and matched"

# --- roles policy -------------------------------------------------------------------------
upsert '{"email":"wannabe@example.com","role":"administrator"}'
expect "admin refused role" "$(j 'd["role"]' <<<"$BODY")" subscriber
expect "admin refused warning" "$(j 'len(d["warnings"])' <<<"$BODY")" 1
ok "role administrator is never granted (default role + warning)"

upsert '{"email":"ghost@example.com","role":"no_such_role","default_role":"customer"}'
expect "unknown role" "$(j 'd["role"]' <<<"$BODY")" customer
expect "unknown role warning" "$(j 'len(d["warnings"])' <<<"$BODY")" 1
upsert '{"email":"ghost@example.com","role":"Subscriber"}'
expect "role by title" "$(j 'd["role"]' <<<"$BODY")" subscriber
expect "role by title changed" "$(j 'd["changed"]' <<<"$BODY")" '["role"]'
ok "an unknown role falls back to default_role; a role title is accepted"

ADMIN_ROW=$(sql "SELECT user_email, user_pass FROM wp_users WHERE ID = 1")
upsert '{"email":"admin@example.com","role":"subscriber","first_name":"Pwned","password":"Pwned-123456","set_password":true,"create":false}'
expect "admin keeps role" "$(j 'd["role"]' <<<"$BODY")" administrator
expect "admin skipped" "$(j 'd["outcome"]' <<<"$BODY")" skipped_privileged
expect "admin nothing changed" "$(j 'd["changed"]' <<<"$BODY")" "[]"
expect "admin warning" "$(j 'len(d["warnings"])' <<<"$BODY")" 1
expect "admin row" "$(sql "SELECT user_email, user_pass FROM wp_users WHERE ID = 1")" "$ADMIN_ROW"
ok "an existing administrator is skipped_privileged: role, names, password unchanged"

upsert '{"email":"editor.wanted@example.com","role":"editor"}'
expect "editor refused role" "$(j 'd["role"]' <<<"$BODY")" subscriber
upsert '{"email":"editor.default@example.com","default_role":"editor"}'
expect "editor default_role" "$CODE" 403
expect "editor default_role error" "$(j 'd["code"]' <<<"$BODY")" wpsb_role_forbidden
ok "editor is never granted, neither as role nor as default_role"

# --- create=false, errors, contact ID -----------------------------------------------------
upsert '{"email":"nobody@example.com","create":false}'
expect "no_user outcome" "$(j 'd["outcome"]' <<<"$BODY")" no_user
api GET "/users/lookup?email=nobody@example.com"
expect "no_user not created" "$BODY" '{"user":null}'
ok "create=false does not create"

upsert '{"email":"not-an-email"}'
expect "invalid email code" "$CODE" 400
expect "invalid email error" "$(j 'd["code"]' <<<"$BODY")" wpsb_invalid_email
upsert '{"email":"x@example.com","tags":["a"]}'
expect "tags without key" "$CODE" 400
expect "tags without key error" "$(j 'd["code"]' <<<"$BODY")" wpsb_invalid_args
upsert '{"email":"x@example.com","meta":{"WP_Capabilities ":{"administrator":true}}}'
expect "capabilities meta" "$CODE" 403
expect "capabilities meta error" "$(j 'd["code"]' <<<"$BODY")" wpsb_protected_meta
api GET "/users/lookup?email=admin@example.com&meta_keys=session_tokens"
expect "session_tokens read" "$CODE" 403
upsert '{"email":"x@example.com","meta":{"City":"Rome"}}'
expect "mixed-case meta" "$CODE" 400
expect "mixed-case meta error" "$(j 'd["code"]' <<<"$BODY")" wpsb_invalid_meta_key
api GET "/users/lookup?email=x@example.com"
expect "nothing created by bad calls" "$BODY" '{"user":null}'
ok "invalid arguments are 400 (wpsb_invalid_email / wpsb_invalid_args / wpsb_invalid_meta_key), protected meta 403"

upsert '{"email":"bob@example.com","contact_id":"c-bob","contact_id_key":"customerly_contact_id"}'
BOB_ID=$(j 'd["user_id"]' <<<"$BODY")
upsert '{"email":"bob.new@example.com","contact_id":"c-bob","contact_id_key":"customerly_contact_id"}'
expect "email change" "$(j 'd["changed"]' <<<"$BODY")" '["email"]'
expect "email change user" "$(j 'd["user_id"]' <<<"$BODY")" "$BOB_ID"
upsert '{"email":"malicia@example.com","contact_id":"c-bob","contact_id_key":"customerly_contact_id"}'
expect "email conflict code" "$CODE" 409
expect "email conflict error" "$(j 'd["code"]' <<<"$BODY")" wpsb_email_conflict
expect "email changed notice to the old address" "$(mail_count_to bob@example.com)" 1
expect "no mail to the new address" "$(mail_count_to bob.new@example.com)" 0
upsert '{"email":"bob.newer@example.com","contact_id":"c-bob","contact_id_key":"customerly_contact_id","notify_email_change":false}'
expect "quiet email change" "$(j 'd["changed"]' <<<"$BODY")" '["email"]'
expect "no notice when turned off" "$(mail_count_to bob.new@example.com)" 0
expect "mails so far" "$(mail_count)" 2
ok "a user found by contact ID gets the new email (notice to the old address unless turned off); a taken email is 409"

# --- passwords and capabilities -----------------------------------------------------------
# login_ok LOGIN PASSWORD: true when wp-login.php accepts the pair (it answers 302 + cookie).
login_ok() {
    curl -sS -o /dev/null -D - -b 'wordpress_test_cookie=WP%20Cookie%20check' \
        --data-urlencode "log=$1" --data-urlencode "pwd=$2" -d 'testcookie=1' \
        "$WPSB_WP_URL/wp-login.php" | grep -qi '^set-cookie: wordpress_logged_in'
}
PW1="first pa'ss\\word\"1"
PW2='second-Pa55word'
body=$(python3 -c 'import json,sys; print(json.dumps({"email": "pat@example.com", "login": "pat", "password": sys.argv[1]}))' "$PW1")
upsert "$body"
expect "pat created" "$(j 'd["login"]' <<<"$BODY")" pat
PAT_ID=$(j 'd["user_id"]' <<<"$BODY")
login_ok pat "$PW1" || fail "wp-login.php refused the password given at creation"
upsert "{\"email\":\"pat@example.com\",\"password\":\"$PW2\"}"
expect "password ignored without set_password" "$(j 'd["outcome"]' <<<"$BODY")" unchanged
upsert "{\"email\":\"pat@example.com\",\"password\":\"$PW2\",\"set_password\":true}"
expect "set_password" "$(j 'd["changed"]' <<<"$BODY")" '["password"]'
login_ok pat "$PW2" || fail "wp-login.php refused the new password"
! login_ok pat "$PW1" || fail "the old password still works"
upsert "{\"email\":\"pat@example.com\",\"password\":\"$PW2\",\"set_password\":true}"
expect "same password again" "$(j 'd["outcome"]' <<<"$BODY")" unchanged
expect "no mail for password changes" "$(mail_count)" 2
ok "password on create, ignored without set_password, changed with it, and logins work"

out=$(curl -sS -u "$AUTH" -H 'Content-Type: application/json' -d '{"name":"smoke"}' \
    "$WPSB_WP_URL/wp-json/wp/v2/users/$PAT_ID/application-passwords")
PAT_AUTH="pat:$(j 'd["password"]' <<<"$out")"
code=$(curl -sS -o "$TMP_DIR/forbidden.json" -w '%{http_code}' -u "$PAT_AUTH" "$WPSB_WP_URL/wp-json/$NS/status")
expect "subscriber status" "$code" 403
expect "subscriber error" "$(j 'd["code"]' <"$TMP_DIR/forbidden.json")" wpsb_forbidden
code=$(curl -sS -o /dev/null -w '%{http_code}' -u "$PAT_AUTH" -H 'Content-Type: application/json' \
    -d '{"email":"sneaky@example.com"}' "$WPSB_WP_URL/wp-json/$NS/users/upsert")
expect "subscriber upsert" "$code" 403
ok "a user without list_users gets 403 wpsb_forbidden"

# --- concurrency --------------------------------------------------------------------------
RACE='{"email":"race@example.com","first_name":"Race","send_notification":true,"meta":{"k":"v"}}'
printf '%s\n' $(seq 1 20) | xargs -P 20 -I{} curl -sS -u "$AUTH" -H 'Content-Type: application/json' \
    --data-binary "$RACE" -o "$TMP_DIR/race.{}.json" "$WPSB_WP_URL/wp-json/$NS/users/upsert"
outcomes=$(python3 -c '
import collections, glob, json, sys
c = collections.Counter(json.load(open(f)).get("outcome", "error") for f in glob.glob(sys.argv[1] + "/race.*.json"))
print(" ".join(f"{k}={c[k]}" for k in sorted(c)))' "$TMP_DIR")
expect "race outcomes" "$outcomes" "created=1 unchanged=19"
expect "race accounts" "$(sql "SELECT COUNT(*) FROM wp_users WHERE LOWER(user_email) = 'race@example.com'")" 1
expect "race mails" "$(mail_count_to race@example.com)" 1
ok "20 concurrent identical upserts create exactly one user and one mail"

# Identical calls are partly guarded by core's username check; distinct logins for one email
# are not (without the plugin's GET_LOCK this produced duplicates here in 2 of 5 rounds).
for round in 1 2 3 4 5; do
    seq 1 20 | xargs -P 20 -I{} curl -sS -o /dev/null -u "$AUTH" -H 'Content-Type: application/json' \
        --data-binary "{\"email\":\"race$round@example.com\",\"login\":\"racer${round}_{}\"}" \
        "$WPSB_WP_URL/wp-json/$NS/users/upsert"
done
expect "race accounts, distinct logins" \
    "$(sql "SELECT COUNT(*) FROM wp_users WHERE user_email LIKE 'race_@example.com'")" 5
ok "5 rounds of 20 concurrent upserts with distinct logins: one user per email"

# --- XML-RPC ------------------------------------------------------------------------------
out=$(xmlrpc wpsb.status '<struct></struct>')
expect "xmlrpc status" "$(j 'd["plugin_version"]' <<<"$out")" "$PLUGIN_VERSION"
out=$(xmlrpc wpsb.status '<struct></struct>' wrong-password)
expect "xmlrpc bad password" "$(j 'd["fault"]["code"]' <<<"$out")" 403
out=$(WPSB_WP_USER=pat xmlrpc wpsb.status '<struct></struct>' "$PW2")
expect "xmlrpc subscriber" "$(j 'd["fault"]["code"]' <<<"$out")" 403
expect "xmlrpc subscriber error" "$(j 'd["fault"]["string"].split(":")[0]' <<<"$out")" wpsb_forbidden
out=$(xmlrpc wpsb.getRoles '<struct></struct>')
expect "xmlrpc roles" "$(j '{"slug": "customer", "name": "Customer"} in d["roles"]' <<<"$out")" true
XSTRUCT='<struct>
<member><name>email</name><value><string>xml.rpc@example.com</string></value></member>
<member><name>first_name</name><value><string>Xavier</string></value></member>
<member><name>send_notification</name><value><boolean>1</boolean></value></member>
<member><name>tags_key</name><value><string>customerly_tags</string></value></member>
<member><name>tags</name><value><array><data><value><string>t1</string></value></data></array></value></member>
<member><name>meta</name><value><struct><member><name>city</name><value><string>Oslo</string></value></member></struct></value></member>
</struct>'
out=$(xmlrpc wpsb.upsertUser "$XSTRUCT")
expect "xmlrpc create" "$(j 'd["outcome"]' <<<"$out")" created
XID=$(j 'd["user_id"]' <<<"$out")
out=$(xmlrpc wpsb.upsertUser "$XSTRUCT")
expect "xmlrpc repeat" "$(j 'd["outcome"]' <<<"$out")" unchanged
expect "xmlrpc repeat changed" "$(j 'd["changed"]' <<<"$out")" "[]"
expect "xmlrpc mail" "$(mail_count_to xml.rpc@example.com)" 1
out=$(xmlrpc wpsb.lookupUser '<struct><member><name>email</name><value><string>XML.RPC@example.com</string></value></member><member><name>meta_keys</name><value><array><data><value><string>city</string></value></data></array></value></member></struct>')
expect "xmlrpc lookup" "$(j 'd["user"]["id"]' <<<"$out")" "$XID"
expect "xmlrpc lookup meta" "$(j 'd["user"]["meta"]' <<<"$out")" '{"city": "Oslo"}'
out=$(xmlrpc wpsb.lookupUser '<struct><member><name>email</name><value><string>none@example.com</string></value></member></struct>')
expect "xmlrpc lookup miss" "$out" '{}'
out=$(xmlrpc wpsb.upsertUser '<struct><member><name>email</name><value><string>bad</string></value></member></struct>')
expect "xmlrpc fault code" "$(j 'd["fault"]["code"]' <<<"$out")" 400
expect "xmlrpc fault string" "$(j 'd["fault"]["string"].split(":")[0]' <<<"$out")" wpsb_invalid_email
ok "XML-RPC wpsb.status, getRoles, upsertUser, lookupUser and faults"

[[ ! -s $WPSB_STACK_DIR/logs/php-errors.log ]] || fail "PHP errors logged: $(tail -5 "$WPSB_STACK_DIR/logs/php-errors.log")"
ok "no PHP errors logged"

# --- lifecycle ----------------------------------------------------------------------------
"$STACK" down 2>/dev/null || fail "down"
[[ -z $(stack_processes) ]] || fail "processes left after down: $(stack_processes)"
set +e
"$STACK" status >/dev/null
rc=$?
set -e
expect "status after down" "$rc" 3
"$STACK" down 2>/dev/null || fail "down when stopped"
ok "down stops everything; status says 3; down again is harmless"

t0=$(now_ms)
"$STACK" up >/dev/null 2>"$TMP_DIR/up3.err" || { cat "$TMP_DIR/up3.err" >&2; fail "up after down"; }
t1=$(now_ms)
! grep -qE 'creating|copying' "$TMP_DIR/up3.err" || fail "up after down re-installed: $(cat "$TMP_DIR/up3.err")"
load_env
api GET "/users/lookup?email=alicia@example.com"
expect "data kept" "$(j 'd["user"]["id"]' <<<"$BODY")" "$ALICIA_ID"
ok "up after down reuses the data ($((t1 - t0)) ms)"

"$STACK" down 2>/dev/null || fail "second down"
"$STACK" purge 2>/dev/null || fail "purge"
[[ ! -e $WPSB_STACK_DIR ]] || fail "purge left $WPSB_STACK_DIR"
"$STACK" up >/dev/null 2>&1 || fail "up after purge"
load_env
api GET "/users/lookup?email=alicia@example.com"
expect "fresh after purge" "$BODY" '{"user":null}'
"$STACK" down 2>/dev/null || fail "down after purge/up"
[[ -z $(stack_processes) ]] || fail "processes left: $(stack_processes)"
"$STACK" purge 2>/dev/null || fail "final purge"
[[ -z $(stack_processes) ]] || fail "processes left after purge: $(stack_processes)"
ok "down/purge/up/down/purge cycle leaves no process"

echo "all $PASSED checks passed"
