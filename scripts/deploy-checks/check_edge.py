"""What sits in front of the gateway in ecs/euglena.yaml: HTTPS by default, open ports, the WAF.

Checks:
  * HTTPS by default: CertificateArn defaults to empty, AllowPlainHttp to "false", and a template Rule fails a
    deploy that has no certificate unless AllowPlainHttp=true; another Rule requires PublicHostName with a
    certificate. With a certificate there is an HTTPS:443 listener (TLS 1.3/1.2 policy) forwarding to the
    gateway target group and port 80 answers a 301 redirect to 443; without one, port 80 forwards.
  * Open ports: the only ingress from the internet (0.0.0.0/0 or ::/0) is the ALB group's 80 and, only with a
    certificate, 443.
  * WAF (when EnableWaf, default "true"): a REGIONAL web ACL associated with the ALB, with a rate-based rule
    per client IP whose limit is the WafRateLimit parameter, the AWS managed rule groups
    AWSManagedRulesCommonRuleSet (SizeRestrictions_BODY overridden to Count) and
    AWSManagedRulesKnownBadInputsRuleSet, a body-size rule and CloudWatch metrics on every rule.
  * The body-size rule blocks exactly the declared Content-Length values above the gateway's own limit,
    MAX_MANDATE_CHARS * 12 + 1024 bytes, with MAX_MANDATE_CHARS read from the gateway container and the
    formula checked against gateway/src/settings.rs: the regex is run over every value up to three times
    the limit, plus padded and very large ones.
  * The ApiUrl output is https://<PublicHostName> with a certificate, and the deploy workflow's smoke test
    reads ApiUrl (not the ALB's own DNS name, which the certificate does not cover).

Usage: python check_edge.py <repo root>   (needs PyYAML: run it with the project .venv's python)
Exit status 0 when everything holds; 1 with one line per problem otherwise.
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_env import containers, plain_values, read_yaml  # noqa: E402

TLS_POLICIES = {
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
}
MANAGED_GROUPS = {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"}
WHERE = "ecs/euglena.yaml"


def is_ref(value, name):
    return isinstance(value, dict) and value.get("Ref") == name


def is_cond_equals(value, param, literal):
    """{"Fn::Equals": [{"Ref": param}, literal]} in either order."""
    if not isinstance(value, dict) or "Fn::Equals" not in value:
        return False
    a, b = value["Fn::Equals"]
    return (is_ref(a, param) and b == literal) or (is_ref(b, param) and a == literal)


def if_branches(value, condition):
    """(yes, no) when value is Fn::If on condition, else None."""
    if isinstance(value, dict) and "Fn::If" in value and value["Fn::If"][0] == condition:
        return value["Fn::If"][1], value["Fn::If"][2]
    return None


def resources_of(template, rtype):
    return {k: r for k, r in (template.get("Resources") or {}).items() if r.get("Type") == rtype}


# ----------------------------------------------------------------------------------------------------------
def check_https(template, problems):
    params = template.get("Parameters") or {}
    conditions = template.get("Conditions") or {}
    if (params.get("CertificateArn") or {}).get("Default", None) != "":
        problems.append(f"{WHERE}: CertificateArn must default to empty (the Rule then demands it)")
    allow = params.get("AllowPlainHttp") or {}
    if allow.get("Default") != "false" or set(allow.get("AllowedValues") or []) != {"true", "false"}:
        problems.append(f"{WHERE}: AllowPlainHttp must exist with AllowedValues true/false and default \"false\"")

    has_cert = conditions.get("HasCertificate")
    if not (isinstance(has_cert, dict) and "Fn::Not" in has_cert
            and is_cond_equals(has_cert["Fn::Not"][0], "CertificateArn", "")):
        problems.append(f"{WHERE}: condition HasCertificate must be !Not [!Equals [!Ref CertificateArn, \"\"]]")

    rules = template.get("Rules") or {}
    guarded = False
    for rule in rules.values():
        if not is_cond_equals(rule.get("RuleCondition"), "CertificateArn", ""):
            continue
        for assertion in rule.get("Assertions") or []:
            if is_cond_equals(assertion.get("Assert"), "AllowPlainHttp", "true") and assertion.get("AssertDescription"):
                guarded = True
    if not guarded:
        problems.append(f"{WHERE}: no Rule fails a deploy without CertificateArn unless AllowPlainHttp=true "
                        f"(RuleCondition: CertificateArn empty; Assert: AllowPlainHttp equals \"true\", with an "
                        f"AssertDescription)")
    host_rule = False
    for rule in rules.values():
        cond = rule.get("RuleCondition")
        if isinstance(cond, dict) and "Fn::Not" in cond and is_cond_equals(cond["Fn::Not"][0], "CertificateArn", ""):
            for assertion in rule.get("Assertions") or []:
                a = assertion.get("Assert")
                if isinstance(a, dict) and "Fn::Not" in a and is_cond_equals(a["Fn::Not"][0], "PublicHostName", ""):
                    host_rule = True
    if not host_rule:
        problems.append(f"{WHERE}: no Rule requires PublicHostName when CertificateArn is set")

    listeners = resources_of(template, "AWS::ElasticLoadBalancingV2::Listener")
    https = [(k, r) for k, r in listeners.items() if r.get("Properties", {}).get("Port") == 443]
    http = [(k, r) for k, r in listeners.items() if r.get("Properties", {}).get("Port") == 80]
    if len(https) != 1 or len(http) != 1 or len(listeners) != 2:
        problems.append(f"{WHERE}: expected exactly one listener on 80 and one on 443, found "
                        f"{sorted((k, r.get('Properties', {}).get('Port')) for k, r in listeners.items())}")
        return
    name, res = https[0]
    p = res.get("Properties", {})
    if res.get("Condition") != "HasCertificate":
        problems.append(f"{WHERE}: {name} (443) must exist only under Condition HasCertificate")
    if p.get("Protocol") != "HTTPS" or p.get("SslPolicy") not in TLS_POLICIES:
        problems.append(f"{WHERE}: {name} must be HTTPS with a TLS 1.3/1.2 policy ({sorted(TLS_POLICIES)[0]}, ...)")
    if [c.get("CertificateArn") for c in p.get("Certificates") or []] != [{"Ref": "CertificateArn"}]:
        problems.append(f"{WHERE}: {name} must use the CertificateArn parameter")
    actions = p.get("DefaultActions") or []
    if not (len(actions) == 1 and actions[0].get("Type") == "forward"
            and is_ref(actions[0].get("TargetGroupArn"), "GatewayTargetGroup")):
        problems.append(f"{WHERE}: {name} must forward to GatewayTargetGroup")

    name, res = http[0]
    p = res.get("Properties", {})
    if res.get("Condition") or p.get("Protocol") != "HTTP":
        problems.append(f"{WHERE}: {name} (80) must be an unconditional HTTP listener")
    branches = if_branches(p.get("DefaultActions"), "HasCertificate")
    if branches is None:
        problems.append(f"{WHERE}: {name}'s DefaultActions must be !If [HasCertificate, <redirect>, <forward>]")
    else:
        yes, no = branches
        redirect = (yes or [{}])[0]
        cfg = redirect.get("RedirectConfig") or {}
        if not (len(yes) == 1 and redirect.get("Type") == "redirect" and cfg.get("Protocol") == "HTTPS"
                and str(cfg.get("Port")) == "443" and cfg.get("StatusCode") == "HTTP_301"):
            problems.append(f"{WHERE}: with a certificate, port 80 must redirect to HTTPS:443 with HTTP_301")
        fwd = (no or [{}])[0]
        if not (len(no) == 1 and fwd.get("Type") == "forward" and is_ref(fwd.get("TargetGroupArn"), "GatewayTargetGroup")):
            problems.append(f"{WHERE}: without a certificate, port 80 must forward to GatewayTargetGroup")


def _ingress_rules(template):
    """(security group logical id, rule, condition or None) for every ingress rule, inline or separate."""
    for gid, sg in resources_of(template, "AWS::EC2::SecurityGroup").items():
        for item in sg.get("Properties", {}).get("SecurityGroupIngress") or []:
            if isinstance(item, dict) and "Fn::If" in item:
                cond, yes, no = item["Fn::If"]
                for branch, label in ((yes, cond), (no, f"!{cond}")):
                    if isinstance(branch, dict) and branch.get("Ref") != "AWS::NoValue":
                        yield gid, branch, label
            else:
                yield gid, item, None
    for _, ing in resources_of(template, "AWS::EC2::SecurityGroupIngress").items():
        p = ing.get("Properties", {})
        gid = p.get("GroupId", {}).get("Ref") if isinstance(p.get("GroupId"), dict) else p.get("GroupId")
        yield gid, p, ing.get("Condition")


def check_ports(template, problems):
    public = set()
    for gid, rule, cond in _ingress_rules(template):
        if rule.get("CidrIp") == "0.0.0.0/0" or rule.get("CidrIpv6") == "::/0":
            public.add((gid, rule.get("FromPort"), rule.get("ToPort"), cond))
    expected = {("AlbSecurityGroup", 80, 80, None), ("AlbSecurityGroup", 443, 443, "HasCertificate")}
    if public != expected:
        problems.append(f"{WHERE}: internet-facing ingress must be exactly ALB 80 (always) and 443 (only "
                        f"HasCertificate); found {sorted(public, key=str)}")


# ----------------------------------------------------------------------------------------------------------
def gateway_body_limit(root, template, problems):
    """MAX_MANDATE_CHARS * 12 + 1024 from the gateway container, the formula checked against the Rust code."""
    gateway = next((c for _, c in containers(template) if c.get("Name") == "gateway"), None)
    value = plain_values(gateway or {}).get("MAX_MANDATE_CHARS")
    if not (isinstance(value, str) and value.isdigit()):
        problems.append(f"{WHERE}: the gateway container must set MAX_MANDATE_CHARS to a literal number (the WAF's "
                        f"body-size rule is derived from it)")
        return None
    settings = os.path.join(root, "gateway", "src", "settings.rs")
    if os.path.exists(settings):
        with open(settings, encoding="utf-8") as fh:
            code = fh.read()
        m = re.search(r"fn body_limit\(&self\)\s*->\s*usize\s*\{\s*([^}]*?)\s*\}", code)
        body = re.sub(r"\s+", "", m.group(1)) if m else ""
        if body != "self.max_mandate_chars*MAX_ESCAPED_CHAR_BYTES+1024" or not re.search(
                r"const MAX_ESCAPED_CHAR_BYTES: usize = 12;", code):
            problems.append("gateway/src/settings.rs: body_limit() is no longer max_mandate_chars * 12 + 1024; "
                            "update the WAF rule body-too-large in ecs/euglena.yaml and this check together")
    return int(value) * 12 + 1024


def check_size_regex(pattern, limit, problems):
    try:
        rx = re.compile(pattern)
    except re.error as err:
        problems.append(f"{WHERE}: body-too-large regex does not compile: {err}")
        return
    wrong = []
    for n in range(0, limit * 3 + 2):
        if bool(rx.search(str(n))) != (n > limit):
            wrong.append(n)
            if len(wrong) > 5:
                break
    samples = {"0": False, str(limit): False, str(limit + 1): True, f"0{limit}": False, f"00{limit + 1}": True,
               f" {limit + 1}": True, f"{limit + 1}\t": True, "1" + "0" * 12: True, "": False, "abc": False,
               f"{limit}0": True, f"-{limit + 1}": False}
    wrong += [repr(k) for k, want in samples.items() if bool(rx.search(k)) != want]
    if wrong:
        problems.append(f"{WHERE}: body-too-large must match exactly the Content-Length values above {limit} "
                        f"(MAX_MANDATE_CHARS * 12 + 1024); wrong for {wrong[:8]}")


def check_waf(root, template, problems):
    params = template.get("Parameters") or {}
    conditions = template.get("Conditions") or {}
    enable = params.get("EnableWaf") or {}
    if enable.get("Default") != "true":
        problems.append(f"{WHERE}: EnableWaf must exist and default to \"true\"")
    if not is_cond_equals(conditions.get("WafEnabled"), "EnableWaf", "true"):
        problems.append(f"{WHERE}: condition WafEnabled must be !Equals [!Ref EnableWaf, \"true\"]")
    rate = params.get("WafRateLimit") or {}
    if rate.get("Type") != "Number" or not isinstance(rate.get("Default"), int):
        problems.append(f"{WHERE}: WafRateLimit must be a Number parameter with a default")

    acls = resources_of(template, "AWS::WAFv2::WebACL")
    if len(acls) != 1:
        problems.append(f"{WHERE}: expected one AWS::WAFv2::WebACL, found {len(acls)}")
        return
    acl_id, acl = next(iter(acls.items()))
    p = acl.get("Properties", {})
    if acl.get("Condition") != "WafEnabled" or p.get("Scope") != "REGIONAL":
        problems.append(f"{WHERE}: {acl_id} must be REGIONAL under Condition WafEnabled")
    assoc = [r for r in resources_of(template, "AWS::WAFv2::WebACLAssociation").values()
             if is_ref(r.get("Properties", {}).get("ResourceArn"), "LoadBalancer")
             and r.get("Properties", {}).get("WebACLArn") == {"Fn::GetAtt": [acl_id, "Arn"]}]
    if len(assoc) != 1:
        problems.append(f"{WHERE}: {acl_id} must be associated with the ALB (WebACLAssociation on !Ref LoadBalancer)")
    if not (p.get("VisibilityConfig") or {}).get("CloudWatchMetricsEnabled"):
        problems.append(f"{WHERE}: {acl_id} needs CloudWatch metrics (VisibilityConfig)")

    rules = p.get("Rules") or []
    priorities = [r.get("Priority") for r in rules]
    if len(set(priorities)) != len(priorities):
        problems.append(f"{WHERE}: {acl_id} rule priorities must be distinct: {priorities}")
    seen_groups, rate_ok, size_rules = set(), False, []
    for rule in rules:
        name = rule.get("Name")
        vis = rule.get("VisibilityConfig") or {}
        if vis.get("CloudWatchMetricsEnabled") is not True or not vis.get("MetricName"):
            problems.append(f"{WHERE}: WAF rule {name} needs VisibilityConfig with CloudWatchMetricsEnabled: true")
        st = rule.get("Statement") or {}
        if "RateBasedStatement" in st:
            rb = st["RateBasedStatement"]
            if rb.get("AggregateKeyType") == "IP" and is_ref(rb.get("Limit"), "WafRateLimit") and "Block" in (
                    rule.get("Action") or {}):
                rate_ok = True
        if "ManagedRuleGroupStatement" in st:
            mg = st["ManagedRuleGroupStatement"]
            if mg.get("VendorName") == "AWS":
                seen_groups.add(mg.get("Name"))
            if (rule.get("OverrideAction") or {}) != {"None": {}}:
                problems.append(f"{WHERE}: WAF rule {name} must keep the group's own actions (OverrideAction None)")
            overrides = {o.get("Name"): o.get("ActionToUse") for o in mg.get("RuleActionOverrides") or []}
            if mg.get("Name") == "AWSManagedRulesCommonRuleSet" and overrides.get("SizeRestrictions_BODY") != {"Count": {}}:
                problems.append(f"{WHERE}: AWSManagedRulesCommonRuleSet must override SizeRestrictions_BODY to Count "
                                f"(it blocks bodies over 8 KB, i.e. long legitimate mandates)")
            if any(a != {"Count": {}} for a in overrides.values()):
                problems.append(f"{WHERE}: WAF rule {name}: overrides may only relax a rule to Count")
        if "RegexMatchStatement" in st or "SizeConstraintStatement" in st:
            size_rules.append(rule)
    if not rate_ok:
        problems.append(f"{WHERE}: no blocking rate-based rule per IP (AggregateKeyType IP, Limit !Ref WafRateLimit)")
    if missing := MANAGED_GROUPS - seen_groups:
        problems.append(f"{WHERE}: managed rule groups missing from the web ACL: {sorted(missing)}")

    limit = gateway_body_limit(root, template, problems)
    body_rules = [r for r in size_rules if "RegexMatchStatement" in r["Statement"]
                  and r["Statement"]["RegexMatchStatement"].get("FieldToMatch") == {"SingleHeader": {"Name": "content-length"}}]
    for r in size_rules:
        sc = r["Statement"].get("SizeConstraintStatement")
        if sc and "Body" in (sc.get("FieldToMatch") or {}):
            oversize = sc["FieldToMatch"]["Body"].get("OversizeHandling", "CONTINUE")
            problems.append(f"{WHERE}: WAF rule {r.get('Name')} constrains the Body size, but on an ALB the WAF sees "
                            f"only the first 8,192 bytes (OversizeHandling {oversize}): it cannot enforce "
                            f"{limit} bytes; use the declared Content-Length")
    if len(body_rules) != 1:
        problems.append(f"{WHERE}: expected one body-size rule (RegexMatchStatement on the content-length header)")
    elif limit is not None:
        rule = body_rules[0]
        block = (rule.get("Action") or {}).get("Block")
        if block is None:
            problems.append(f"{WHERE}: WAF rule {rule.get('Name')} must Block")
        elif ((block.get("CustomResponse") or {}).get("ResponseCode")) != 413:
            problems.append(f"{WHERE}: WAF rule {rule.get('Name')} should answer 413 like the gateway")
        check_size_regex(rule["Statement"]["RegexMatchStatement"].get("RegexString", ""), limit, problems)


def check_api_url(root, template, problems):
    out = (template.get("Outputs") or {}).get("ApiUrl") or {}
    branches = if_branches(out.get("Value"), "HasCertificate")
    if branches is None or branches[0] != {"Fn::Sub": "https://${PublicHostName}"}:
        problems.append(f"{WHERE}: output ApiUrl must be !If [HasCertificate, !Sub https://${{PublicHostName}}, ...]")
    wf = os.path.join(root, ".github", "workflows", "deploy.yml")
    if os.path.exists(wf):
        with open(wf, encoding="utf-8") as fh:
            text = fh.read()
        if "OutputKey=='ApiUrl'" not in text:
            problems.append(".github/workflows/deploy.yml: the smoke test must read the stack output ApiUrl "
                            "(https://<PublicHostName>), not the ALB's DNS name")


def main(root):
    problems = []
    template = read_yaml(os.path.join(root, "ecs", "euglena.yaml"))
    check_https(template, problems)
    check_ports(template, problems)
    check_waf(root, template, problems)
    check_api_url(root, template, problems)
    if problems:
        print(f"edge (HTTPS, ports, WAF): FAILED: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("edge: HTTPS unless AllowPlainHttp=true (Rule), 80->443 redirect, ports 80/443 only, WAF rate limit, "
          "managed rule groups, body-size rule = gateway limit, metrics on every rule: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()))
