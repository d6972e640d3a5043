#!/usr/bin/env python3
"""S3 readiness probe / smoke test with SigV4-signed requests, stdlib only.

  s3_probe.py ENDPOINT ACCESS_KEY SECRET_KEY REGION BUCKET          # ListBuckets lists BUCKET
  s3_probe.py ENDPOINT ACCESS_KEY SECRET_KEY REGION BUCKET --smoke  # + put/get/delete an object

Signing the probe (rather than sending an anonymous request) checks the
credentials the tests will use and keeps "access denied" noise out of the log.
"""
import datetime
import hashlib
import hmac
import http.client
import sys
import urllib.parse


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def request(endpoint, ak, sk, region, method, path, body=b""):
    u = urllib.parse.urlsplit(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = sha256(body)
    headers = {"host": u.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, urllib.parse.quote(path, safe="/-_.~"), "",
        "".join("%s:%s\n" % (k, headers[k]) for k in sorted(headers)), signed, payload_hash,
    ])
    scope = "%s/%s/s3/aws4_request" % (day, region)
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, sha256(canonical.encode())])
    key = ("AWS4" + sk).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (ak, scope, signed, sig)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def main():
    endpoint, ak, sk, region, bucket = sys.argv[1:6]
    smoke = "--smoke" in sys.argv[6:]
    status, body = request(endpoint, ak, sk, region, "GET", "/")
    if status != 200:
        print("ListBuckets: HTTP %d %s" % (status, body[:300]), file=sys.stderr)
        return 1
    if ("<Name>%s</Name>" % bucket).encode() not in body:
        print("ListBuckets does not list bucket %r" % bucket, file=sys.stderr)
        return 1
    if smoke:
        key, data = "/%s/atelier-smoke-probe.txt" % bucket, b"hello from the s3 probe\n"
        for method, payload, want in (("PUT", data, 200), ("GET", b"", 200), ("DELETE", b"", 204)):
            status, got = request(endpoint, ak, sk, region, method, key, payload)
            if status != want or (method == "GET" and got != data):
                print("%s %s: HTTP %d %r" % (method, key, status, got[:300]), file=sys.stderr)
                return 1
        print("s3 smoke ok: put/get/delete %s" % key)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # connection refused etc. simply means "not ready yet"
        print("s3 not ready: %s" % e, file=sys.stderr)
        sys.exit(1)
