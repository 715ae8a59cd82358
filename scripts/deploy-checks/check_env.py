"""Environment-variable coverage and secret hygiene of the deployment files.

Checks, for every variable the binaries read:
  * it is set (Environment or Secrets) on the container that runs that binary in ecs/euglena.yaml
    (gateway, agent, metrics-sidecar) or in the autoscaler Lambda's Environment.Variables;
  * it is documented in .env.example (as `NAME=` or a commented `# NAME=` line);
and, for every container and the Lambda:
  * no secret-looking name (…_KEY, SECRET, PASSWORD, PASS, TOKEN, CREDENTIAL, REDIS_URL, RABBITMQ_URL) is a
    plain Environment value, and no plain value is a URL carrying credentials (scheme://user:pass@host);
plus a few structural guarantees of the compose file, the template (check_structure) and the Dockerfiles
(check_dockerfiles), and, against the code (check_compose, check_env_example, check_settings_reference):
  * docker-compose.yml: every service is known, each app service builds from an existing Dockerfile whose
    .dockerignore keeps .env out, reads .env, and sets in `environment:` only variables its binary reads;
    every ${VAR} it interpolates is set in .env.example; the fixture model is behind a profile;
  * .env.example: every variable carries a tag ([required], [optional, default: X] or [compose]); [compose]
    variables are not read by the binaries and every other one is; a default the code states as a literal
    (string_or / parse_or / ranged / seconds / bool_or, constants resolved) is the default written, and a
    commented-out `# NAME=value` line shows that default or nothing; SUPABASE_URL is not set (development
    tokens carry no `iss`);
  * docs/operations.md, section "Settings reference": every variable the binaries read has a row there, and
    the row names the code's literal default;
and least privilege (check_least_privilege): each app container and compose service takes REDIS_URL and
RABBITMQ_URL with its own user, and the Redis ACL lines and RabbitMQ definitions written out in the template
are those docker/euglena-users.sh prints.

The variable list is the documented configuration contract (copied below) united with the names found by
regex in the Rust settings code, when those files exist. Exemptions carry a reason each.

Usage: python check_env.py <repo root>   (needs PyYAML: run it with the project .venv's python)
Exit status 0 when everything holds; 1 with one line per problem otherwise.
"""

from __future__ import annotations

import glob
import os
import re
import sys

import yaml

# ----------------------------------------------------------------------------------------------------------
# The documented configuration contract (keep in sync when it changes). Component -> variables it reads.
DOCUMENTED_VARIABLES = {
    # "Shared": read by the gateway, the agent and the metrics sidecar (shared::settings::CommonSettings).
    "shared": ["REDIS_URL", "RABBITMQ_URL", "AGENT_INPUT_QUEUE", "REDIS_KEY_PREFIX", "LOG_FORMAT", "RUST_LOG",
               "TLS_CA_FILE", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"],
    "gateway": ["PORT", "SUPABASE_URL", "SUPABASE_JWT_SECRET", "SUPABASE_JWKS_URL", "SUPABASE_JWT_AUDIENCE",
                "SUPABASE_ALLOW_UNCONFIRMED", "DAILY_TICK_LIMIT", "MAX_TICKS_PER_TASK", "MAX_MANDATE_CHARS",
                "CORS_ORIGINS"],
    "agent": ["HEALTH_PORT", "AGENT_CONCURRENCY", "AGENT_STATUS_TIME", "MODEL_API_URL", "MODEL_NAME",
              "OPENAI_API_KEY", "SEARCH_API_URL", "SEARCH_API_KEY", "CHROMIUM_PATH", "VISIT_ALLOWLIST",
              "QDRANT_URL", "QDRANT_PATH", "EMBEDDING_MODEL_DIR", "ECS_AGENT_URI"],
    "sidecar": ["PORT", "QUEUE_NAME", "METRICS_NAMESPACE", "PUBLISH_INTERVAL_SECONDS", "RABBITMQ_MANAGEMENT_URL",
                "AWS_REGION", "AWS_ENDPOINT_URL"],
    "lambda": ["ECS_CLUSTER", "ECS_SERVICE", "QUEUE_NAME", "TARGET_MESSAGES_PER_WORKER", "MIN_WORKERS",
               "MAX_WORKERS", "SCALE_IN_STABILIZATION_SECONDS", "DRY_RUN"],
}
SHARED_USERS = ("gateway", "agent", "sidecar")

# Rust files whose string literals passed to the settings helpers name variables, by component.
CODE_SOURCES = {
    "shared": ["shared/src/*.rs"],
    "gateway": ["gateway/src/**/*.rs"],
    "agent": ["agent/src/**/*.rs"],
    "sidecar": ["metrics-sidecar/src/*.rs"],
    "lambda": ["autoscaler-lambda/src/*.rs"],
}
HELPER_CALL = re.compile(
    r"\b(?:optional|string_or|parse_or|parse|ranged|bool_or|secret|required_secret|seconds)"
    r"\s*(?:::<[^>]*>)?\(\s*(?:&?[a-z_][a-z0-9_]*\s*,\s*)?\"([A-Z][A-Z0-9_]*)\"",
    re.S,
)
ENV_VAR_CALL = re.compile(r"\benv::var(?:_os)?\(\s*\"([A-Z][A-Z0-9_]*)\"")

# Where each component runs on AWS: (CloudFormation resource type, container name or None for a Lambda).
TARGETS = {
    "gateway": ("AWS::ECS::TaskDefinition", "gateway"),
    "agent": ("AWS::ECS::TaskDefinition", "agent"),
    "sidecar": ("AWS::ECS::TaskDefinition", "metrics-sidecar"),
    "lambda": ("AWS::Lambda::Function", None),
}

# Variables that need not be set in the ECS task definitions / Lambda, with the reason.
EXEMPT_FROM_AWS = {
    "ECS_AGENT_URI": "injected by the ECS container agent into every Fargate container; never set by hand",
    "ECS_CONTAINER_METADATA_URI_V4": "injected by ECS (task metadata endpoint)",
    "HOSTNAME": "set by the container runtime",
    "WORKER_ID": "optional; defaults to the host name, which is unique per ECS task",
    "QDRANT_API_KEY": "only for a Qdrant server that requires a key; the stack's Qdrant container does not",
    "AWS_ENDPOINT_URL": "points the SDK at an AWS emulator in tests; must stay unset on AWS",
    "AWS_DEFAULT_REGION": "alternative spelling of AWS_REGION, which the sidecar gets",
    "AWS_ACCESS_KEY_ID": "credentials come from the task/function role, never from variables",
    "AWS_SECRET_ACCESS_KEY": "credentials come from the task/function role, never from variables",
    "AWS_SESSION_TOKEN": "credentials come from the task/function role, never from variables",
    "TLS_CA_FILE": "the managed endpoints (ElastiCache, Amazon MQ) present public certificates the system roots cover",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "the stack runs no trace collector; unset, nothing is exported",
    "OTEL_SERVICE_NAME": "defaults to the binary's name; only meaningful with OTEL_EXPORTER_OTLP_ENDPOINT",
}
# Lambda only: the runtime sets these and they are reserved (CloudFormation refuses them).
EXEMPT_FROM_LAMBDA = {
    "AWS_REGION": "reserved Lambda runtime variable, always set by Lambda",
}
# Variables .env.example need not document.
EXEMPT_FROM_ENV_EXAMPLE = {
    "ECS_CONTAINER_METADATA_URI_V4": "injected by ECS only",
    "HOSTNAME": "set by the container runtime",
    "AWS_DEFAULT_REGION": "AWS_REGION is documented instead",
    "AWS_SESSION_TOKEN": "temporary credentials are never put in a file",
}

SECRET_NAME = re.compile(r"(^|_)(SECRET|PASSWORD|PASS|TOKEN|CREDENTIALS?)(_|$)|_KEY$|ACCESS_KEY")
# Names that look like secrets but are not; name -> reason.
NOT_SECRET = {
    "SUPABASE_ANON_KEY": "Supabase's public key for browsers: the dashboard hands it to every visitor",
}
# URLs whose value carries credentials by design: always from Secrets Manager.
CREDENTIAL_URLS = {"REDIS_URL", "RABBITMQ_URL"}
URL_WITH_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s@:]*:[^/\s@]+@", re.I)


# ----------------------------------------------------------------------------------------------------------
class CfnLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short tags (!Ref, !Sub, ...) into their long forms."""


def _cfn_tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else ("Fn::GetAtt" if suffix == "GetAtt" else f"Fn::{suffix}")
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def read_yaml(path):
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=CfnLoader)


def is_test_file(path):
    """Test modules kept in files of their own (`.../tests.rs`, `.../tests/...`): not the binaries' settings."""
    parts = path.replace(os.sep, "/").split("/")
    return parts[-1] == "tests.rs" or "tests" in parts[:-1]


def strip_tests(source: str) -> str:
    """Drops `#[cfg(test)]` modules (everything from the first one: they sit at the end of our files)."""
    cut = source.find("#[cfg(test)]")
    return source if cut < 0 else source[:cut]


def variables_from_code(root):
    found = {}
    for component, patterns in CODE_SOURCES.items():
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
                if is_test_file(os.path.relpath(path, root)):
                    continue
                with open(path, encoding="utf-8") as fh:
                    text = strip_tests(fh.read())
                for match in list(HELPER_CALL.finditer(text)) + list(ENV_VAR_CALL.finditer(text)):
                    found.setdefault(component, {}).setdefault(match.group(1), set()).add(
                        os.path.relpath(path, root))
    return found


def required_by_component(root):
    """component -> {variable: [where it comes from]} (documented contract and code)."""
    required = {c: {} for c in TARGETS}

    def add(component, name, origin):
        users = SHARED_USERS if component == "shared" else (component,)
        for user in users:
            required[user].setdefault(name, set()).add(origin)

    for component, names in DOCUMENTED_VARIABLES.items():
        for name in names:
            add(component, name, "documented contract")
    for component, names in variables_from_code(root).items():
        for name, files in names.items():
            for f in files:
                add(component, name, f)
    return required


# ----------------------------------------------------------------------------------------------------------
def _alternatives(item):
    """An Environment/Secrets list item, or each branch of an Fn::If around it."""
    if isinstance(item, dict) and "Fn::If" in item:
        _, yes, no = item["Fn::If"]
        return _alternatives(yes) + _alternatives(no)
    if isinstance(item, dict) and item.get("Ref") == "AWS::NoValue":
        return []
    return [item]


def _list(value):
    """A property that is a list, possibly wrapped in Fn::If (both branches count)."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        return _list(yes) + _list(no)
    if isinstance(value, list):
        out = []
        for item in value:
            out.extend(_alternatives(item))
        return out
    return []


def containers(template):
    """(resource logical id, container definition) for every ECS container."""
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::ECS::TaskDefinition":
            continue
        for container in _list(resource.get("Properties", {}).get("ContainerDefinitions")):
            if isinstance(container, dict):
                yield logical_id, container


def lambdas(template):
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") == "AWS::Lambda::Function":
            yield logical_id, resource


def plain_values(container):
    """name -> value for the container's Environment entries."""
    out = {}
    for item in _list(container.get("Environment")):
        if isinstance(item, dict) and "Name" in item:
            out[item["Name"]] = item.get("Value")
    return out


def secret_names(container):
    return {item["Name"] for item in _list(container.get("Secrets")) if isinstance(item, dict) and "Name" in item}


def is_secret_name(name):
    if name in NOT_SECRET:
        return False
    return bool(SECRET_NAME.search(name)) or name in CREDENTIAL_URLS


def check_plain_values(where, values, problems):
    for name, value in values.items():
        if is_secret_name(name):
            problems.append(f"{where}: {name} looks secret but is a plain Environment value "
                            f"(use Secrets / Secrets Manager)")
        if isinstance(value, str) and URL_WITH_CREDENTIALS.search(value):
            problems.append(f"{where}: {name} is a URL carrying credentials as a plain value")


# ----------------------------------------------------------------------------------------------------------
def check_structure(root, template, compose, problems):
    res = template.get("Resources") or {}
    agent_services = [r for r in res.values() if r.get("Type") == "AWS::ECS::Service"
                      and "agent" in str(r.get("Properties", {}).get("ServiceName", ""))]
    if not agent_services:
        problems.append("ecs/euglena.yaml: no agent ECS service found")
    for svc in agent_services:
        if "DesiredCount" in svc.get("Properties", {}):
            problems.append("ecs/euglena.yaml: the agent service sets DesiredCount; it would reset the "
                            "autoscaler Lambda's value on every stack update")
    for _, c in containers(template):
        if c.get("Name") == "agent" and c.get("StopTimeout") != 120:
            problems.append("ecs/euglena.yaml: the agent container's StopTimeout must be 120")
    for _, fn in lambdas(template):
        p = fn.get("Properties", {})
        if p.get("Runtime") != "provided.al2023" or p.get("Handler") != "bootstrap":
            problems.append("ecs/euglena.yaml: the autoscaler must use provided.al2023 with handler bootstrap")
    rules = [r for r in res.values() if r.get("Type") == "AWS::Events::Rule"]
    if not any(r.get("Properties", {}).get("ScheduleExpression") == "rate(2 minutes)" for r in rules):
        problems.append("ecs/euglena.yaml: no EventBridge rule with rate(2 minutes)")

    services = (compose or {}).get("services") or {}
    for required in ("redis", "rabbitmq", "qdrant", "gateway", "agent", "metrics-sidecar"):
        if required not in services:
            problems.append(f"docker-compose.yml: service {required} is missing")
    agent = services.get("agent") or {}
    if "container_name" in agent or "ports" in agent:
        problems.append("docker-compose.yml: agent must have no container_name and no host ports "
                        "(--scale agent=N)")
    for name in ("gateway", "agent", "metrics-sidecar"):
        svc = services.get(name) or {}
        if "healthcheck" not in svc:
            problems.append(f"docker-compose.yml: {name} has no healthcheck")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if not isinstance(cond, dict) or cond.get("condition") != "service_healthy":
                problems.append(f"docker-compose.yml: {name} depends on {dep} without service_healthy")


def check_dockerfiles(root, problems):
    """The three images: cargo-chef caching, one locked package, non-root, HEALTHCHECK, EXPOSE."""
    for package, port in (("gateway", 8080), ("agent", 8081), ("metrics-sidecar", 8082)):
        path = os.path.join(root, "docker", f"{package}.Dockerfile")
        where = f"docker/{package}.Dockerfile"
        if not os.path.exists(path):
            problems.append(f"{where} is missing")
            continue
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        required = {
            "cargo chef prepare": "dependency recipe (cargo chef prepare)",
            "cargo chef cook": "dependency caching (cargo chef cook)",
            f"cargo build --release --locked -p {package}": f"a locked release build of -p {package}",
            "FROM debian:bookworm-slim": "a debian:bookworm-slim runtime stage",
            "HEALTHCHECK": "a HEALTHCHECK",
            f"EXPOSE {port}": f"EXPOSE {port}",
        }
        for needle, what in required.items():
            if needle not in text:
                problems.append(f"{where}: needs {what}")
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{where}: the runtime stage must run as a non-root USER")
    agent = os.path.join(root, "docker", "agent.Dockerfile")
    if os.path.exists(agent):
        with open(agent, encoding="utf-8") as fh:
            text = fh.read()
        for needle in ("chromium", "fetch-embedding-model.sh", "/opt/models/all-MiniLM-L6-v2"):
            if needle not in text:
                problems.append(f"docker/agent.Dockerfile: needs {needle}")



# ----------------------------------------------------------------------------------------------------------
# The compose file and .env.example against the code, and the settings reference.

# Compose services -> the component whose settings the container reads (None: no settings of ours).
COMPOSE_SERVICES = {
    "redis": None, "rabbitmq": None, "qdrant": None, "fixture-model": None,
    "gateway": "gateway", "agent": "agent", "metrics-sidecar": "sidecar",
}
# Variables read by docker compose itself or by the redis/rabbitmq images, never by our binaries.
COMPOSE_ONLY = {"COMPOSE_PROFILES", "RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS", "REDIS_PASSWORD",
                "GATEWAY_REDIS_PASSWORD", "AGENT_REDIS_PASSWORD", "SIDECAR_REDIS_PASSWORD",
                "GATEWAY_RABBITMQ_PASSWORD", "AGENT_RABBITMQ_PASSWORD", "SIDECAR_RABBITMQ_PASSWORD"}
# The stack's passwords among them: an app service may blank them (set them to "") in its `environment:`, so
# that env_file .env does not hand a container the other components' (or the administrators') passwords.
STACK_PASSWORDS = {name for name in COMPOSE_ONLY if name.endswith(("_PASSWORD", "_PASS"))}
# Read by the AWS SDK (credential chain), not by our settings code; documented for the sidecar.
SDK_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"}
# [required] although the code gives a default-free Missing error only for a combination: name -> why.
CONDITIONALLY_REQUIRED = {
    "SUPABASE_JWT_SECRET": "the gateway refuses to start with none of SUPABASE_JWT_SECRET, SUPABASE_URL, "
                           "SUPABASE_JWKS_URL",
}
SETTINGS_DOC = os.path.join("docs", "operations.md")
SETTINGS_HEADING = "## Settings reference"

DEFAULT_CALL = re.compile(
    r"\b(string_or|parse_or|ranged|seconds|bool_or)\s*(?:::<[^>]*>)?\(\s*\"([A-Z][A-Z0-9_]*)\"\s*,\s*"
    r"(\"[^\"]*\"|[^,()\"]+?)\s*[,)]",
    re.S,
)
KIND_CALL = re.compile(
    r"\b(optional|string_or|parse_or|parse|ranged|bool_or|secret|required_secret|seconds)"
    r"\s*(?:::<[^>]*>)?\(\s*(?:&?[a-z_][a-z0-9_]*\s*,\s*)?\"([A-Z][A-Z0-9_]*)\"",
    re.S,
)
MISSING_CALL = re.compile(r"(?:SettingsError::Missing\(|required_secret\()\s*\"([A-Z][A-Z0-9_]*)\"")
CONST_DEF = re.compile(r"\bconst\s+([A-Z][A-Z0-9_]*)\s*:\s*[^=;]+=\s*([^;]+);")
DEFAULTING = {"string_or", "parse_or", "ranged", "seconds", "bool_or"}
# Defaults the settings helpers do not express, read from the code by a pattern of their own.
EXTRA_DEFAULTS = {
    "RUST_LOG": ("shared/src/telemetry.rs", re.compile(r"const DEFAULT_FILTER: &str = \"([^\"]*)\";")),
    "LOG_FORMAT": ("shared/src/telemetry.rs", re.compile(r"None \| Some\(\"(\w+)\"\) => Ok\(LogFormat::")),
}
TAG = re.compile(r"\[(required|optional|compose)\b([^\]]*)\]")
NUMBER_SUFFIX = re.compile(r"_?(?:u8|u16|u32|u64|u128|usize|i8|i16|i32|i64|isize|f32|f64)$")


def _source_files(root):
    for component, patterns in CODE_SOURCES.items():
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
                if is_test_file(os.path.relpath(path, root)):
                    continue
                with open(path, encoding="utf-8") as fh:
                    yield component, path, strip_tests(fh.read())


def _literal(expr, consts):
    """The canonical text of a Rust default expression, or None when it is not a literal (or a constant)."""
    expr = expr.strip()
    for _ in range(3):
        name = expr.split("::")[-1].strip()
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and name in consts:
            expr = consts[name].strip()
        else:
            break
    if len(expr) >= 2 and expr[0] == expr[-1] == '"':
        return expr[1:-1]
    if expr in ("true", "false"):
        return expr
    number = NUMBER_SUFFIX.sub("", expr).replace("_", "")
    try:
        value = float(number)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def code_defaults(root):
    """name -> {"literals": {text}, "defaulting": bool, "plain": bool, "required": bool} from the code."""
    files = list(_source_files(root))
    consts = {}
    for _, _, text in files:
        for m in CONST_DEF.finditer(text):
            consts.setdefault(m.group(1), m.group(2))
    info = {}

    def entry(name):
        return info.setdefault(name, {"literals": set(), "defaulting": False, "plain": False, "required": False})

    for _, _, text in files:
        for m in KIND_CALL.finditer(text):
            e = entry(m.group(2))
            if m.group(1) in DEFAULTING:
                e["defaulting"] = True
            else:
                e["plain"] = True
        for m in DEFAULT_CALL.finditer(text):
            value = _literal(m.group(3), consts)
            if value is not None:
                entry(m.group(2))["literals"].add(value)
        for m in MISSING_CALL.finditer(text):
            entry(m.group(1))["required"] = True
    for name, (rel, pattern) in EXTRA_DEFAULTS.items():
        path = os.path.join(root, rel)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                m = pattern.search(fh.read())
            if m:
                e = entry(name)
                e["defaulting"] = True
                e["literals"].add(m.group(1))
    return info


def _mentions(text, literal):
    """Whether `literal` stands on its own in `text` (numbers compared as numbers, `(empty)` for "")."""
    if literal == "":
        return "empty" in text
    pattern = r"(?<![\w./:=-])" + re.escape(literal) + r"(?![\w/:=-])"
    if re.search(pattern, text):
        return True
    try:
        wanted = float(literal)
    except ValueError:
        return False
    return any(float(n.replace(",", "")) == wanted for n in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", text))


def parse_env_example(path):
    """name -> {"set": bool, "value": str, "tag": kind or None, "tag_text": str, "line": n}."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    var_line = re.compile(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
    entries = {}
    for i, line in enumerate(lines):
        m = var_line.match(line)
        if not m:
            continue
        comments = []
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#") and not var_line.match(lines[j]):
            comments.insert(0, lines[j].lstrip("# ").rstrip())
            j -= 1
        tags = TAG.findall(" ".join(comments))
        kind, rest = tags[-1] if tags else (None, "")
        entries[m.group(2)] = {"set": not m.group(1), "value": m.group(3).strip(), "tag": kind,
                               "tag_text": rest, "line": i + 1}
    return entries


def _tag_default(rest):
    m = re.search(r"default:\s*(.*)$", rest.strip())
    return m.group(1).strip() if m else None


def check_env_example(root, entries, read_by_code, defaults, problems):
    where = ".env.example"
    known = set(read_by_code) | SDK_VARIABLES
    for name, e in sorted(entries.items()):
        at = f"{where}:{e['line']}: {name}"
        if e["tag"] is None:
            problems.append(f"{at} has no [required] / [optional, default: X] / [compose] tag in the comment above it")
            continue
        if e["tag"] == "compose":
            if name not in COMPOSE_ONLY:
                problems.append(f"{at} is tagged [compose] but is not one of {sorted(COMPOSE_ONLY)}")
            if name in read_by_code:
                problems.append(f"{at} is tagged [compose] but a binary reads it")
            continue
        if name not in known:
            problems.append(f"{at}: no binary reads it (a stale or misspelt name)")
        code = defaults.get(name, {})
        if e["tag"] == "required":
            if not code.get("required") and name not in CONDITIONALLY_REQUIRED:
                problems.append(f"{at} is tagged [required] but the code has a default or treats it as optional")
            continue
        if code.get("required"):
            problems.append(f"{at}: the code requires it (SettingsError::Missing); tag it [required]")
        written = _tag_default(e["tag_text"])
        if written is None:
            problems.append(f"{at}: [optional] needs `default: X` (or `default: (none)`)")
            continue
        literals = code.get("literals", set())
        free_text = written.startswith("(") and not written.startswith("(empty")
        if literals:
            missing = [lit for lit in sorted(literals) if free_text or not _mentions(written, lit)]
            if missing:
                problems.append(f"{at}: the code's default is {' / '.join(repr(m) for m in missing)}, "
                                f"but the tag says default: {written}")
        elif code.get("plain") and not code.get("defaulting") and not written.startswith("("):
            problems.append(f"{at}: the code has no default for it, but the tag says default: {written}; "
                            f"write `default: (none)` or say in parentheses what happens")
        if not e["set"] and e["value"]:
            if not literals and code.get("defaulting") and _mentions(written, e["value"]):
                pass  # a default the code computes (an enum's Default, say), as the tag states it
            elif not literals:
                problems.append(f"{at}: a commented-out line shows the default; the code has none, so leave it "
                                f"empty (`# {name}=`) and give examples in the comment")
            elif not any(e["value"] == lit or _mentions(e["value"], lit) for lit in literals):
                problems.append(f"{at}: the commented-out value {e['value']!r} is not the code's default "
                                f"({' / '.join(sorted(literals))})")
    for name in read_by_code:
        if name in entries or name in EXEMPT_FROM_ENV_EXAMPLE:
            continue
        problems.append(f"{where}: {name} is read by a binary but not listed")
    supabase = entries.get("SUPABASE_URL")
    if supabase and supabase["set"]:
        problems.append(f"{where}: SUPABASE_URL is set, so the gateway demands iss={{SUPABASE_URL}}/auth/v1, which "
                        f"the development tokens of scripts/dev-jwt.sh lack: leave it commented out")


def check_compose(root, compose, entries, required, problems):
    where = "docker-compose.yml"
    services = (compose or {}).get("services") or {}
    for name in services:
        if name not in COMPOSE_SERVICES:
            problems.append(f"{where}: service {name} is unknown to scripts/deploy-checks/check_env.py "
                            f"(add it to COMPOSE_SERVICES with the settings it reads)")
    for name, svc in services.items():
        svc = svc or {}
        component = COMPOSE_SERVICES.get(name)
        build = svc.get("build")
        if isinstance(build, dict) and build.get("dockerfile"):
            dockerfile = os.path.join(root, build.get("context", "."), build["dockerfile"])
            if not os.path.exists(dockerfile):
                problems.append(f"{where}: {name} builds from {build['dockerfile']}, which does not exist")
            ignore = dockerfile + ".dockerignore"
            if not os.path.exists(ignore):
                problems.append(f"{where}: {name}: {build['dockerfile']}.dockerignore is missing (.env would be "
                                f"sent to the builder)")
        environment = svc.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
        if component is None:
            continue
        env_files = svc.get("env_file")
        env_files = env_files if isinstance(env_files, list) else [env_files]
        if not any((f.get("path") if isinstance(f, dict) else f) == ".env" for f in env_files if f):
            problems.append(f"{where}: {name} must read env_file .env (the settings documented in .env.example)")
        for var, value in environment.items():
            if var in STACK_PASSWORDS and value in ("", None):
                continue  # blanked: the container must not hold it
            if var not in required[component]:
                problems.append(f"{where}: {name} sets {var}, which the {component} does not read")
        blanked = {var for var, value in environment.items() if var in STACK_PASSWORDS and value in ("", None)}
        if blanked != STACK_PASSWORDS:
            problems.append(f"{where}: {name} must blank every stack password it does not need (env_file .env "
                            f"would hand them over); missing: {sorted(STACK_PASSWORDS - blanked)}")
    text = open(os.path.join(root, "docker-compose.yml"), encoding="utf-8").read()
    for var, operator in sorted(set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(:?-)?", text))):
        e = entries.get(var)
        if operator:
            # ${VAR:-default}: it may stay unset, but it must be a documented setting.
            if not e:
                problems.append(f"{where}: interpolates ${{{var}}}, which .env.example does not list")
        elif not e or not e["set"]:
            problems.append(f"{where}: interpolates ${{{var}}}, which .env.example does not set")
    fixture = services.get("fixture-model")
    if fixture is not None:
        profiles = fixture.get("profiles") or []
        if not profiles:
            problems.append(f"{where}: fixture-model must sit behind a profile (it is not a model)")
        model_url = (entries.get("MODEL_API_URL") or {}).get("value", "")
        if "fixture-model" in model_url:
            wanted = set((entries.get("COMPOSE_PROFILES") or {}).get("value", "").split(","))
            if not wanted & set(profiles):
                problems.append(".env.example: MODEL_API_URL points at fixture-model, so COMPOSE_PROFILES must "
                                f"enable its profile ({', '.join(profiles)})")
    for ignore in sorted(glob.glob(os.path.join(root, "docker", "*.dockerignore"))) + [
            os.path.join(root, ".dockerignore")]:
        if not os.path.exists(ignore):
            problems.append(f"{os.path.relpath(ignore, root)} is missing")
            continue
        rules = {line.strip() for line in open(ignore, encoding="utf-8") if line.strip()}
        for rule in (".env", ".env.*", "!.env.example"):
            if rule not in rules:
                problems.append(f"{os.path.relpath(ignore, root)}: needs the line {rule} (no local secrets in images)")


def check_settings_reference(root, read_by_code, defaults, problems):
    path = os.path.join(root, SETTINGS_DOC)
    if not os.path.exists(path):
        problems.append(f"{SETTINGS_DOC} is missing (it holds the settings reference)")
        return
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    start = text.find(SETTINGS_HEADING)
    if start < 0:
        problems.append(f"{SETTINGS_DOC}: no section '{SETTINGS_HEADING}'")
        return
    end = text.find("\n## ", start + len(SETTINGS_HEADING))
    section = text[start:] if end < 0 else text[start:end]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = line.split("|")
        first = cells[1] if len(cells) > 2 else ""
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", first):
            rows.setdefault(name, []).append(line)
    for name in sorted(read_by_code):
        if name not in rows:
            problems.append(f"{SETTINGS_DOC}: {name} (read by a binary) has no row in '{SETTINGS_HEADING}'")
            continue
        row = " ".join(rows[name])
        for literal in sorted(defaults.get(name, {}).get("literals", set())):
            if not _mentions(row, literal):
                problems.append(f"{SETTINGS_DOC}: the row of {name} does not give the code's default {literal!r}")


def env_example_names(path):
    names, values = set(), {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = re.match(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.rstrip("\n"))
            if m:
                names.add(m.group(2))
                if not m.group(1):
                    values[m.group(2)] = m.group(3)
    return names, values


# ----------------------------------------------------------------------------------------------------------
# Least privilege: each component connects as its own Redis and RabbitMQ user, with the rules of
# docker/euglena-users.sh, and the users written out in ecs/euglena.yaml are that script's.

USERS_SCRIPT = os.path.join("docker", "euglena-users.sh")
# compose service / ECS container -> (component, the prefix of its ConnectionUrls keys, compose password stem)
LEAST_PRIVILEGE = {
    "gateway": ("gateway", "GATEWAY", "GATEWAY"),
    "agent": ("agent", "AGENT", "AGENT"),
    "metrics-sidecar": ("metrics-sidecar", "SIDECAR", "SIDECAR"),
}
# Dummy passwords for comparing the written-out definitions with the script's (placeholders in the template).
DEFINITION_PASSWORDS = {
    "RABBITMQ_DEFAULT_PASS": "p-admin",
    "GATEWAY_RABBITMQ_PASSWORD": "p-gateway",
    "AGENT_RABBITMQ_PASSWORD": "p-agent",
    "SIDECAR_RABBITMQ_PASSWORD": "p-sidecar",
}


def users_script(root, args, env):
    import subprocess
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    done = subprocess.run(["sh", os.path.join(root, USERS_SCRIPT), *args], capture_output=True, text=True,
                          env=full, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{USERS_SCRIPT} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _flat_command(container):
    parts = container.get("Command") or []
    return " ".join(" ".join(str(p).split()) for p in parts if isinstance(p, str))


def check_least_privilege(root, template, compose, problems):
    import json
    where = "ecs/euglena.yaml"
    if not os.path.exists(os.path.join(root, USERS_SCRIPT)):
        problems.append(f"{USERS_SCRIPT} is missing (the components' Redis and RabbitMQ users)")
        return
    by_name = {c.get("Name"): c for _, c in containers(template)}
    settings = {}
    for name, (component, key, _) in LEAST_PRIVILEGE.items():
        container = by_name.get(name)
        if container is None:
            continue
        values = plain_values(container)
        settings[name] = tuple(values.get(v) for v in ("REDIS_KEY_PREFIX", "AGENT_INPUT_QUEUE", "MAX_DELIVERIES"))
        for item in _list(container.get("Secrets")):
            if not isinstance(item, dict) or item.get("Name") not in ("REDIS_URL", "RABBITMQ_URL"):
                continue
            wanted = f"{key}_{item['Name']}"
            if wanted not in json.dumps(item.get("ValueFrom")):
                problems.append(f"{where} container {name}: {item['Name']} must come from ConnectionUrls:{wanted} "
                                f"(its own user), not {item.get('ValueFrom')}")
    if len(set(settings.values())) > 1:
        problems.append(f"{where}: gateway, agent and metrics-sidecar disagree on REDIS_KEY_PREFIX / "
                        f"AGENT_INPUT_QUEUE / MAX_DELIVERIES: {settings}")
    prefix, queue, deliveries = next(iter(settings.values()), ("", "agent.mandates", "3"))
    env = {"REDIS_KEY_PREFIX": prefix or "", "AGENT_INPUT_QUEUE": queue or "agent.mandates",
           "MAX_DELIVERIES": deliveries or "3"}
    try:
        redis = by_name.get("redis")
        if redis is not None:
            command = _flat_command(redis)
            for name, (component, _, stem) in LEAST_PRIVILEGE.items():
                rules = " ".join(users_script(root, ["redis-rules", component], env).split())
                line = f"user euglena-{component} on >${stem}_REDIS_PASSWORD {rules}"
                if line not in command:
                    problems.append(f"{where} container redis: the ACL line of euglena-{component} is not "
                                    f"{USERS_SCRIPT}'s ({line})")
        rabbitmq = by_name.get("rabbitmq")
        if rabbitmq is not None:
            written = plain_values(rabbitmq).get("EUGLENA_DEFINITIONS") or ""
            for var, dummy in DEFINITION_PASSWORDS.items():
                written = written.replace(f"@{var}@", dummy)
            expected = users_script(root, ["rabbitmq-definitions"],
                                    {**env, "RABBITMQ_DEFAULT_USER": "euglena", **DEFINITION_PASSWORDS})
            try:
                same = json.loads(written) == json.loads(expected)
            except ValueError:
                same = False
            if not same:
                problems.append(f"{where} container rabbitmq: EUGLENA_DEFINITIONS is not {USERS_SCRIPT} "
                                f"rabbitmq-definitions (for {env})")
    except RuntimeError as error:
        problems.append(str(error))

    services = (compose or {}).get("services") or {}
    for name, (component, _, stem) in LEAST_PRIVILEGE.items():
        environment = (services.get(name) or {}).get("environment") or {}
        for var, password in (("REDIS_URL", f"{stem}_REDIS_PASSWORD"), ("RABBITMQ_URL", f"{stem}_RABBITMQ_PASSWORD")):
            value = str(environment.get(var) or "")
            if f"://euglena-{component}:${{{password}" not in value:
                problems.append(f"docker-compose.yml: {name} must set {var} with its own user "
                                f"(euglena-{component}:${{{password}...}}), not {value!r}")
    for name in ("redis", "rabbitmq"):
        volumes = " ".join(str(v) for v in (services.get(name) or {}).get("volumes") or [])
        if USERS_SCRIPT.replace(os.sep, "/") not in volumes:
            problems.append(f"docker-compose.yml: {name} must mount {USERS_SCRIPT} (it creates the users)")


def main(root):
    problems = []
    template_path = os.path.join(root, "ecs", "euglena.yaml")
    template = read_yaml(template_path)
    compose = read_yaml(os.path.join(root, "docker-compose.yml"))
    example_names, example_values = env_example_names(os.path.join(root, ".env.example"))
    required = required_by_component(root)

    by_container = {c.get("Name"): c for _, c in containers(template)}
    lambda_vars = {}
    for _, fn in lambdas(template):
        lambda_vars.update(((fn.get("Properties", {}).get("Environment") or {}).get("Variables") or {}))

    print("Variables the binaries read (documented contract + settings code), by component:")
    for component, names in required.items():
        print(f"  {component:8} {' '.join(sorted(names))}")
    print("Exempt from ECS/Lambda: " + "; ".join(f"{k} ({v})" for k, v in EXEMPT_FROM_AWS.items()))
    print("Exempt from the Lambda only: " + "; ".join(f"{k} ({v})" for k, v in EXEMPT_FROM_LAMBDA.items()))
    print("Exempt from .env.example: " + "; ".join(f"{k} ({v})" for k, v in EXEMPT_FROM_ENV_EXAMPLE.items()))

    for component, names in required.items():
        kind, container_name = TARGETS[component]
        if kind == "AWS::ECS::TaskDefinition":
            container = by_container.get(container_name)
            if container is None:
                problems.append(f"ecs/euglena.yaml: no container named {container_name}")
                continue
            present = set(plain_values(container)) | secret_names(container)
            where = f"ecs/euglena.yaml container {container_name}"
        else:
            present = set(lambda_vars)
            where = "ecs/euglena.yaml autoscaler Lambda"
        for name in sorted(names):
            if name in EXEMPT_FROM_AWS or (kind == "AWS::Lambda::Function" and name in EXEMPT_FROM_LAMBDA):
                continue
            if name not in present:
                origins = ", ".join(sorted(names[name]))
                problems.append(f"{where}: {name} is not set (read by {component}; from {origins})")
        for name in sorted(names):
            if name not in example_names and name not in EXEMPT_FROM_ENV_EXAMPLE:
                problems.append(f".env.example: {name} is not documented (read by {component})")

    for _, container in containers(template):
        check_plain_values(f"ecs/euglena.yaml container {container.get('Name')}", plain_values(container), problems)
        for name in CREDENTIAL_URLS & set(plain_values(container)):
            problems.append(f"ecs/euglena.yaml container {container.get('Name')}: {name} must come from Secrets")
    check_plain_values("ecs/euglena.yaml autoscaler Lambda", lambda_vars, problems)

    for name, value in example_values.items():
        if is_secret_name(name) and value and "change-me" not in value:
            problems.append(f".env.example: {name} must be empty or a change-me placeholder")
        if URL_WITH_CREDENTIALS.search(value or "") and "change-me" not in value:
            problems.append(f".env.example: {name} carries credentials that are not a change-me placeholder")

    check_structure(root, template, compose, problems)
    check_least_privilege(root, template, compose, problems)
    check_dockerfiles(root, problems)
    read_by_code = set().union(*(set(names) for names in required.values()))
    defaults = code_defaults(root)
    entries = parse_env_example(os.path.join(root, ".env.example"))
    check_env_example(root, entries, read_by_code, defaults, problems)
    check_compose(root, compose, entries, required, problems)
    check_settings_reference(root, read_by_code, defaults, problems)

    if problems:
        print(f"\nFAILED: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("env-var coverage, secret hygiene, compose/template/Dockerfile structure, .env.example tags and "
          "defaults against the code, compose variables, settings reference: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()))
