#!/usr/bin/env sh
# The command gate against `make serve`: ask approval for one exact command, run it once when approved.
#
#   terminal 1:  make serve
#   terminal 2:  sh examples/agents/exec_example.sh          (waits, showing who is still needed)
#   terminal 3:  keyturn list --reviewable --token <alice's token>
#                keyturn approve <id> --comment "go" --token <alice's token>
#
# Alice's token: `keyturn users add-token --users-file examples/users.yaml user:alice@example.com`.
# The agent's API key comes from KEYTURN_API_KEY, or is created here for agent:deploy-bot.
# Exit codes: the command's own; 77 denied/expired/cancelled; 69 server unreachable; 75 no decision in time.
set -eu

cd "$(dirname "$0")/../.."
KEYTURN="${KEYTURN:-.venv/bin/keyturn}"
export KEYTURN_URL="${KEYTURN_URL:-http://127.0.0.1:8300}"

if [ -z "${KEYTURN_API_KEY:-}" ]; then
  # `api-keys create` prints the key once, alone on stdout.
  KEYTURN_API_KEY="$("$KEYTURN" api-keys create --agent deploy-bot --groups bots --config examples/keyturn.yaml)"
  export KEYTURN_API_KEY
fi

# 1. A shell command: the demo policy sends `shell.exec` to review (tier high). A reviewer sees the exact
#    argv, the working directory and `params.command`, and may edit the command before approving.
"$KEYTURN" exec --action shell.exec --resource "host://$(hostname)" \
  --justification "clean the build directory before the release build" \
  --timeout 600 -- sh -c 'echo "cleaning $(pwd)/build"; rm -rf ./build-example-tmp'

# 2. A deployment with a brokered secret (reviewed too: tier high). The rule `deploys` grants
#    DEPLOY_TOKEN, which the server reads from its own environment (KEYTURN_DEMO_DEPLOY_TOKEN when
#    `make serve` started) and hands to this command only, with the consumed grant. The agent never
#    sees it; it is never printed.
"$KEYTURN" exec --action deploy.run --resource "prod/web" \
  --justification "release 1.4.2" --timeout 600 -- \
  sh -c 'test -n "$DEPLOY_TOKEN" && echo "deploying with a token of ${#DEPLOY_TOKEN} characters"'
