#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine and no AWS account needed):
#   1. docker-compose.yml against the Compose spec      (check-jsonschema --builtin-schema vendor.compose-spec)
#   2. every CloudFormation template under ecs/         (cfn-lint, zero errors/warnings)
#   3. the GitHub workflows                             (actionlint when installed, else check-jsonschema
#                                                        --builtin-schema vendor.github-workflows)
#   4. env-var coverage and secret hygiene              (scripts/deploy-checks/check_env.py: every variable the
#      binaries read is set in the ECS task definitions / Lambda, tagged in .env.example with the code's own
#      default, and listed in docs/operations.md's settings reference; the compose file's services and
#      variables match the binaries' settings; .env stays out of every image; no secret is a plain
#      Environment value)
#   5. what sits in front of the gateway                (scripts/deploy-checks/check_edge.py: HTTPS unless
#      AllowPlainHttp=true, 80 -> 443 redirect, only ports 80/443 open, the WAF's rate limit, managed rule
#      groups, body-size rule equal to the gateway's limit, CloudWatch metrics on every rule)
#   6. CI/CD trust                                      (scripts/deploy-checks/check_cicd.py: every third-party
#      action pinned to a commit SHA, the OIDC trust subject = the deploy jobs' GitHub environment, the
#      CloudFormation execution role scoped to the template's services, roles under the workload boundary)
#   7. shell scripts with shellcheck, when installed    (optional)
# The PyPI tools go into the project virtualenv .venv (created if missing; idempotent).
# Exit status: 0 when everything passes, 1 otherwise (each failure is named).
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1
venv="$repo_root/.venv"
failures=()

log() { printf '[check-deploy] %s\n' "$*"; }
fail() { failures+=("$1"); log "FAIL: $1"; }

# --- tools ------------------------------------------------------------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    python3 -m venv "$venv" || { echo "check-deploy: could not create $venv" >&2; exit 1; }
fi
missing=()
[[ -x "$venv/bin/check-jsonschema" ]] || missing+=(check-jsonschema)
[[ -x "$venv/bin/cfn-lint" ]] || missing+=(cfn-lint)
"$venv/bin/python" -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
if ((${#missing[@]})); then
    log "installing into .venv: ${missing[*]}"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}" \
        || { echo "check-deploy: pip install ${missing[*]} failed" >&2; exit 1; }
fi

# --- 1. compose ---------------------------------------------------------------------------------------------
if out="$("$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml 2>&1)"; then
    log "compose: $out"
else
    printf '%s\n' "$out" >&2
    fail "docker-compose.yml does not validate against the Compose spec"
fi

# --- 2. CloudFormation ----------------------------------------------------------------------------------------
shopt -s nullglob
templates=(ecs/*.yaml ecs/*.yml)
if ((${#templates[@]} == 0)); then
    fail "no CloudFormation templates under ecs/"
elif out="$("$venv/bin/cfn-lint" -- "${templates[@]}" 2>&1)"; then
    log "cfn-lint: ${templates[*]}: no errors, no warnings"
else
    printf '%s\n' "$out" >&2
    fail "cfn-lint reported problems in ${templates[*]}"
fi

# --- 3. workflows ---------------------------------------------------------------------------------------------
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
if ((${#workflows[@]} == 0)); then
    fail "no workflows under .github/workflows/"
elif command -v actionlint >/dev/null 2>&1 || [[ -x "$venv/bin/actionlint" ]]; then
    actionlint_bin="$(command -v actionlint || echo "$venv/bin/actionlint")"
    if out="$("$actionlint_bin" "${workflows[@]}" 2>&1)"; then
        log "actionlint: ${workflows[*]}: clean"
    else
        printf '%s\n' "$out" >&2
        fail "actionlint reported problems"
    fi
else
    for wf in "${workflows[@]}"; do
        if out="$("$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "$wf" 2>&1)"; then
            log "workflow schema (actionlint not installed): $wf: $out"
        else
            printf '%s\n' "$out" >&2
            fail "$wf does not validate against the GitHub workflow schema"
        fi
    done
fi

# --- 4. env vars and secrets ------------------------------------------------------------------------------------
if "$venv/bin/python" scripts/deploy-checks/check_env.py "$repo_root"; then
    :
else
    fail "env-var coverage / secret hygiene (see the list above)"
fi

# --- 5. edge: HTTPS, open ports, WAF ----------------------------------------------------------------------------
if "$venv/bin/python" scripts/deploy-checks/check_edge.py "$repo_root"; then
    :
else
    fail "HTTPS / open ports / WAF (see the list above)"
fi

# --- 6. CI/CD trust -----------------------------------------------------------------------------------------------
if "$venv/bin/python" scripts/deploy-checks/check_cicd.py "$repo_root"; then
    :
else
    fail "CI/CD trust: action pinning / OIDC subject / execution role (see the list above)"
fi

# --- 7. shellcheck (optional) -----------------------------------------------------------------------------------
if command -v shellcheck >/dev/null 2>&1; then
    if out="$(shellcheck -S warning scripts/check-deploy.sh 2>&1)"; then
        log "shellcheck: scripts/check-deploy.sh clean"
    else
        printf '%s\n' "$out" >&2
        fail "shellcheck reported problems in scripts/check-deploy.sh"
    fi
fi

if ((${#failures[@]})); then
    echo "check-deploy: FAILED (${#failures[@]}):" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
log "all deployment checks passed"
