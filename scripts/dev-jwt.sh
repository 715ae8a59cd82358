#!/usr/bin/env bash
# Prints an HS256 development JWT that the gateway accepts when started with SUPABASE_JWT_SECRET=$1.
# Usage: scripts/dev-jwt.sh SECRET [SUB] [HOURS]. For local use only.
set -euo pipefail
secret=${1:?usage: dev-jwt.sh SECRET [SUB] [HOURS]}
sub=${2:-dev-user}
hours=${3:-12}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"sub":"%s","aud":"authenticated","role":"authenticated","iat":%d,"exp":%d,"is_anonymous":false,"user_metadata":{"email_verified":true}}' \
  "$sub" "$now" $((now + hours * 3600)) | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -hmac "$secret" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
