"""CI/CD trust: pinned actions, the OIDC subject, and what the deploy roles may do.

Checks:
  * Pinned actions: every `uses:` in .github/workflows/ that is not local (./...) names a full 40-hex commit
    SHA (docker:// images a sha256 digest) and carries the version in a trailing comment
    (`uses: owner/repo@<sha> # v1.2.3`).
  * OIDC subject: the GitHub deploy role in ecs/bootstrap.yaml trusts exactly
    repo:${GitHubRepository}:environment:${GitHubEnvironment} (StringEquals, nothing looser) with
    aud = sts.amazonaws.com, and every job of .github/workflows/deploy.yml that assumes a role
    (aws-actions/configure-aws-credentials) declares `environment:` equal to GitHubEnvironment's default,
    and holds `id-token: write` at job level; no other job and no workflow-level block grants id-token.
    No pull-request workflow touches AWS.
  * CloudFormation execution role: no AWS managed policies (PowerUserAccess, AdministratorAccess, ...), no
    Allow of "*" or of a whole service outside the services ecs/euglena.yaml creates resources in; every such
    service is covered; iam:PassRole only with iam:PassedToService; roles created or changed only with the
    workload permissions boundary.
  * Permissions boundary: every role in ecs/euglena.yaml carries <prefix>-workload-boundary, and every action
    those roles' policies allow is allowed by the boundary in ecs/bootstrap.yaml.
  * Template size: above CloudFormation's inline limit (51,200 bytes) every `aws cloudformation deploy` of
    ecs/euglena.yaml in the workflows and docs/deploy.md passes --s3-bucket.

Usage: python check_cicd.py <repo root>   (needs PyYAML: run it with the project .venv's python)
Exit status 0 when everything holds; 1 with one line per problem otherwise.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_env import read_yaml  # noqa: E402

SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
DOCKER_PIN = re.compile(r"^docker://[^@\s]+@sha256:[0-9a-f]{64}$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(['\"]?)([^'\"#\s]+)\1\s*(#\s*(\S.*))?$")
AWS_CREDENTIALS_ACTION = "aws-actions/configure-aws-credentials"
OIDC_HOST = "token.actions.githubusercontent.com"
INLINE_TEMPLATE_LIMIT = 51_200

# Resource type service -> IAM prefix the CloudFormation execution role needs for it.
SERVICE_PREFIX = {
    "ECS": "ecs", "EC2": "ec2", "ElasticLoadBalancingV2": "elasticloadbalancing", "WAFv2": "wafv2",
    "Logs": "logs", "IAM": "iam", "Lambda": "lambda", "Events": "events", "Scheduler": "scheduler",
    "CloudWatch": "cloudwatch", "ServiceDiscovery": "servicediscovery", "SecretsManager": "secretsmanager",
    "AmazonMQ": "mq", "ElastiCache": "elasticache", "ApplicationAutoScaling": "application-autoscaling",
    "SSM": "ssm", "ECR": "ecr", "S3": "s3", "SNS": "sns",
}
# Prefixes the execution role needs although the template names no resource of that service; why.
SUPPORTING_PREFIXES = {
    "route53": "Cloud Map's private DNS namespace is a Route 53 private hosted zone",
    "s3": "Lambda reads the autoscaler zip from the artifact bucket with the caller's permissions",
}
BROAD_MANAGED_POLICIES = ("AdministratorAccess", "PowerUserAccess", "IAMFullAccess", "ReadOnlyAccess")


def load_plain_yaml(path):
    """GitHub workflow YAML (keeps `on:` a string key instead of YAML 1.1's True)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:bool"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=Loader)


def as_list(value):
    return value if isinstance(value, list) else [value]


# ----------------------------------------------------------------------------------------------------------
def check_pinned_actions(root, problems):
    workflows = sorted(glob.glob(os.path.join(root, ".github", "workflows", "*.y*ml")))
    if not workflows:
        problems.append(".github/workflows: no workflow files")
    count = 0
    for path in workflows:
        rel = os.path.relpath(path, root)
        data = load_plain_yaml(path) or {}
        declared = []
        for job in (data.get("jobs") or {}).values():
            if isinstance(job, dict) and "uses" in job:
                declared.append(job["uses"])
            for step in (job or {}).get("steps") or []:
                if isinstance(step, dict) and "uses" in step:
                    declared.append(step["uses"])
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        on_lines = {}
        for number, line in enumerate(lines, 1):
            m = USES_LINE.match(line)
            if m:
                on_lines.setdefault(m.group(2), []).append((number, m.group(4)))
            elif re.match(r"^\s*(?:-\s+)?uses:", line):
                problems.append(f"{rel}:{number}: cannot read this `uses:` line (one action per line, "
                                f"`uses: owner/repo@<sha> # vX.Y.Z`)")
        for ref in declared:
            if not isinstance(ref, str):
                problems.append(f"{rel}: `uses:` value {ref!r} is not a string")
                continue
            if ref.startswith("./"):
                continue
            count += 1
            if ref.startswith("docker://"):
                if not DOCKER_PIN.match(ref):
                    problems.append(f"{rel}: {ref} must be pinned by digest (docker://image@sha256:<64 hex>)")
                continue
            if not SHA_PIN.match(ref):
                problems.append(f"{rel}: {ref} is not pinned to a full 40-character commit SHA")
            for number, comment in on_lines.get(ref, []):
                if not comment:
                    problems.append(f"{rel}:{number}: {ref} needs the version in a trailing comment (# vX.Y.Z)")
            if ref not in on_lines:
                problems.append(f"{rel}: {ref} is not on a `uses:` line of its own")
    return count


# ----------------------------------------------------------------------------------------------------------
def job_environment(job):
    env = job.get("environment")
    if isinstance(env, dict):
        env = env.get("name")
    return env


def grants_id_token(permissions):
    if permissions in ("write-all",):
        return True
    return isinstance(permissions, dict) and permissions.get("id-token") == "write"


def assumes_aws_role(job):
    return any(isinstance(s, dict) and str(s.get("uses", "")).split("@")[0] == AWS_CREDENTIALS_ACTION
               for s in job.get("steps") or [])


def trust_statements(role):
    doc = role.get("Properties", {}).get("AssumeRolePolicyDocument") or {}
    return as_list(doc.get("Statement") or [])


def check_oidc(root, bootstrap, problems):
    where = "ecs/bootstrap.yaml"
    params = bootstrap.get("Parameters") or {}
    env_default = (params.get("GitHubEnvironment") or {}).get("Default")
    if not env_default:
        problems.append(f"{where}: parameter GitHubEnvironment (with a default, e.g. production) is missing")
    roles = {k: r for k, r in (bootstrap.get("Resources") or {}).items() if r.get("Type") == "AWS::IAM::Role"}
    oidc_roles = {}
    for name, role in roles.items():
        for st in trust_statements(role):
            if "sts:AssumeRoleWithWebIdentity" in as_list(st.get("Action")):
                oidc_roles.setdefault(name, []).append(st)
    if set(oidc_roles) != {"GitHubDeployRole"}:
        problems.append(f"{where}: expected exactly one OIDC role (GitHubDeployRole), found {sorted(oidc_roles)}")
    for name, statements in oidc_roles.items():
        for st in statements:
            federated = str((st.get("Principal") or {}).get("Federated"))
            if OIDC_HOST not in federated:
                problems.append(f"{where}: {name} trusts a web identity other than {OIDC_HOST}")
            cond = st.get("Condition") or {}
            if st.get("Effect") != "Allow" or set(cond) != {"StringEquals"}:
                problems.append(f"{where}: {name}'s trust must be one Allow with a StringEquals condition only "
                                f"(found {sorted(cond)}; StringLike/ForAnyValue would widen the subject)")
            eq = cond.get("StringEquals") or {}
            if eq.get(f"{OIDC_HOST}:aud") != "sts.amazonaws.com":
                problems.append(f"{where}: {name}: {OIDC_HOST}:aud must equal sts.amazonaws.com")
            sub = eq.get(f"{OIDC_HOST}:sub")
            want = {"Fn::Sub": "repo:${GitHubRepository}:environment:${GitHubEnvironment}"}
            if sub != want:
                problems.append(f"{where}: {name}: {OIDC_HOST}:sub must be exactly "
                                f"!Sub repo:${{GitHubRepository}}:environment:${{GitHubEnvironment}} "
                                f"(the subject of a job with `environment:`), found {sub!r}")

    deploy_path = os.path.join(root, ".github", "workflows", "deploy.yml")
    deploy = load_plain_yaml(deploy_path) or {}
    rel = ".github/workflows/deploy.yml"
    if grants_id_token(deploy.get("permissions")):
        problems.append(f"{rel}: id-token: write must be granted per job (only to jobs that assume the role), "
                        f"not to the whole workflow")
    aws_jobs = 0
    for job_id, job in (deploy.get("jobs") or {}).items():
        job = job or {}
        if assumes_aws_role(job):
            aws_jobs += 1
            env = job_environment(job)
            if env != env_default:
                problems.append(f"{rel}: job {job_id} assumes the deploy role, so it must declare "
                                f"`environment: {env_default}` (the OIDC subject the role trusts is "
                                f"repo:<owner>/<repo>:environment:{env_default}); found {env!r}")
            if not grants_id_token(job.get("permissions")):
                problems.append(f"{rel}: job {job_id} assumes the deploy role but has no job-level id-token: write")
        elif grants_id_token(job.get("permissions")):
            problems.append(f"{rel}: job {job_id} has id-token: write but assumes no role")
    if aws_jobs == 0:
        problems.append(f"{rel}: no job assumes the deploy role (configure-aws-credentials)")

    for path in sorted(glob.glob(os.path.join(root, ".github", "workflows", "*.y*ml"))):
        data = load_plain_yaml(path) or {}
        triggers = data.get("on") or {}
        triggers = set(triggers) if isinstance(triggers, (dict, list)) else {triggers}
        if triggers & {"pull_request", "pull_request_target"}:
            prel = os.path.relpath(path, root)
            jobs = (data.get("jobs") or {}).values()
            if grants_id_token(data.get("permissions")) or any(grants_id_token((j or {}).get("permissions")) for j in jobs):
                problems.append(f"{prel}: a pull-request workflow must not get id-token: write")
            if any(assumes_aws_role(j or {}) for j in jobs):
                problems.append(f"{prel}: a pull-request workflow must not assume an AWS role")
    return env_default


# ----------------------------------------------------------------------------------------------------------
def statements_of(role):
    for policy in role.get("Properties", {}).get("Policies") or []:
        for st in as_list((policy.get("PolicyDocument") or {}).get("Statement") or []):
            yield st


def sub_text(value):
    if isinstance(value, dict) and "Fn::Sub" in value:
        return value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
    return value if isinstance(value, str) else ""


def check_execution_role(bootstrap, app, problems):
    where = "ecs/bootstrap.yaml CloudFormationExecutionRole"
    role = (bootstrap.get("Resources") or {}).get("CloudFormationExecutionRole")
    if not role:
        problems.append("ecs/bootstrap.yaml: CloudFormationExecutionRole is missing")
        return
    props = role.get("Properties", {})
    for arn in props.get("ManagedPolicyArns") or []:
        text = sub_text(arn) or str(arn)
        if ":aws:policy/" in text or any(p in text for p in BROAD_MANAGED_POLICIES):
            problems.append(f"{where}: AWS managed policy {text} (grants services the stack does not use)")
    used = set()
    for resource in (app.get("Resources") or {}).values():
        parts = str(resource.get("Type", "")).split("::")
        if len(parts) == 3 and parts[0] == "AWS":
            prefix = SERVICE_PREFIX.get(parts[1])
            if prefix is None:
                problems.append(f"ecs/euglena.yaml: resource type {resource['Type']} is new to "
                                f"scripts/deploy-checks/check_cicd.py: add its IAM prefix there and its actions "
                                f"to the CloudFormation execution role")
            else:
                used.add(prefix)
    granted = set()
    for st in statements_of(role):
        actions = as_list(st.get("Action") or [])
        if st.get("Effect") != "Allow":
            continue
        for action in actions:
            if action == "*" or action.startswith("*"):
                problems.append(f"{where}: Allow of {action!r}")
                continue
            prefix = action.split(":", 1)[0]
            granted.add(prefix)
            if action in ("iam:*", "sts:*", "organizations:*", "kms:*"):
                problems.append(f"{where}: Allow of {action} (far beyond creating this stack)")
            if action == "iam:PassRole":
                keys = (st.get("Condition") or {}).get("StringEquals") or {}
                if "iam:PassedToService" not in keys:
                    problems.append(f"{where}: iam:PassRole without an iam:PassedToService condition")
            if action in ("iam:CreateRole", "iam:PutRolePolicy", "iam:AttachRolePolicy",
                          "iam:PutRolePermissionsBoundary"):
                keys = (st.get("Condition") or {}).get("StringEquals") or {}
                if keys.get("iam:PermissionsBoundary") != {"Ref": "WorkloadBoundary"}:
                    problems.append(f"{where}: {action} must require iam:PermissionsBoundary = the workload boundary")
            if action.startswith("iam:") and action != "iam:CreateServiceLinkedRole":
                for res in as_list(st.get("Resource")):
                    if not sub_text(res).endswith(":role/${NamePrefix}-*"):
                        problems.append(f"{where}: {action} on {res!r}: IAM only on the stack's roles (<prefix>-*)")
    if missing := used - granted:
        problems.append(f"{where}: no permissions for {sorted(missing)}, which ecs/euglena.yaml creates resources in")
    extra = granted - used - set(SUPPORTING_PREFIXES)
    if extra:
        problems.append(f"{where}: grants {sorted(extra)}, which ecs/euglena.yaml does not use")


def action_allowed(action, patterns):
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


def check_boundary(bootstrap, app, problems):
    boundary = (bootstrap.get("Resources") or {}).get("WorkloadBoundary")
    if not boundary or boundary.get("Type") != "AWS::IAM::ManagedPolicy":
        problems.append("ecs/bootstrap.yaml: WorkloadBoundary (AWS::IAM::ManagedPolicy) is missing")
        return
    props = boundary.get("Properties", {})
    if sub_text(props.get("ManagedPolicyName")) != "${NamePrefix}-workload-boundary":
        problems.append("ecs/bootstrap.yaml: WorkloadBoundary must be named ${NamePrefix}-workload-boundary")
    allowed = []
    for st in as_list((props.get("PolicyDocument") or {}).get("Statement") or []):
        if st.get("Effect") == "Allow":
            allowed += as_list(st.get("Action") or [])
    for a in allowed:
        if a == "*" or a.startswith(("iam:", "sts:")) or a.endswith(":*"):
            problems.append(f"ecs/bootstrap.yaml: WorkloadBoundary allows {a}: keep it to the workload's actions")
    for name, role in (app.get("Resources") or {}).items():
        if role.get("Type") != "AWS::IAM::Role":
            continue
        pb = sub_text(role.get("Properties", {}).get("PermissionsBoundary"))
        if not pb.endswith(":policy/${NamePrefix}-workload-boundary"):
            problems.append(f"ecs/euglena.yaml: role {name} needs PermissionsBoundary "
                            f"arn:...:policy/${{NamePrefix}}-workload-boundary (the execution role may only "
                            f"create roles under it)")
        for st in statements_of(role):
            if st.get("Effect") != "Allow":
                continue
            for action in as_list(st.get("Action") or []):
                if not action_allowed(action, allowed):
                    problems.append(f"ecs/euglena.yaml: role {name} uses {action}, which the workload boundary in "
                                    f"ecs/bootstrap.yaml does not allow (add it there, or the role loses it)")


# ----------------------------------------------------------------------------------------------------------
def deploy_commands(text):
    """Each `aws cloudformation deploy` command (with its backslash continuations) in text."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "aws cloudformation deploy" in line:
            cmd = [line]
            j = i
            while cmd[-1].rstrip().endswith("\\") and j + 1 < len(lines):
                j += 1
                cmd.append(lines[j])
            yield i + 1, "\n".join(cmd)


def check_template_size(root, problems):
    size = os.path.getsize(os.path.join(root, "ecs", "euglena.yaml"))
    if size <= INLINE_TEMPLATE_LIMIT:
        return size
    for rel in (".github/workflows/deploy.yml", "docs/deploy.md"):
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for line, cmd in deploy_commands(text):
            if "ecs/euglena.yaml" in cmd and "--s3-bucket" not in cmd:
                problems.append(f"{rel}:{line}: ecs/euglena.yaml is {size} bytes, over CloudFormation's "
                                f"{INLINE_TEMPLATE_LIMIT}-byte inline limit: this deploy needs --s3-bucket")
    return size


def main(root):
    problems = []
    bootstrap = read_yaml(os.path.join(root, "ecs", "bootstrap.yaml"))
    app = read_yaml(os.path.join(root, "ecs", "euglena.yaml"))
    pinned = check_pinned_actions(root, problems)
    env = check_oidc(root, bootstrap, problems)
    check_execution_role(bootstrap, app, problems)
    check_boundary(bootstrap, app, problems)
    size = check_template_size(root, problems)
    if problems:
        print(f"CI/CD trust: FAILED: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"CI/CD trust: {pinned} third-party action references pinned to commit SHAs; OIDC subject "
          f"repo:<owner>/<repo>:environment:{env} = the deploy jobs' environment; execution role scoped to the "
          f"template's services; roles under the workload boundary; template {size} bytes deployed via S3: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()))
