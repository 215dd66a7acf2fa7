#!/usr/bin/env python3
"""Test and benchmark S3 client: one upload or download against an S3 server
(moto in the tests), with boto3 or aws-cli, timed, with the object's sha256,
printed as JSON.

  put  KEY  uploads SIZE bytes of seeded pseudo-random data (bucket created first)
  get  KEY  downloads the object and hashes what arrived

The proxy comes from the standard HTTP_PROXY / HTTPS_PROXY variables, as for
any client. aws-cli runs in this process through its own driver, with its
command tables loaded before the clock starts: the time is the transfer's, not
the interpreter's start-up. --max-bandwidth sets the SDK's own limit
(boto3's TransferConfig.max_bandwidth, aws-cli's s3.max_bandwidth), in bytes
per second.

Only for endpoints inside network namespaces the test created, or loopback.
"""

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time

CHUNK = 1 << 20


def data_file(directory, size, seed):
    """Writes SIZE seeded bytes (incompressible, reproducible) and returns path and sha256."""
    path = os.path.join(directory, "object")
    digest = hashlib.sha256()
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(CHUNK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return path, digest.hexdigest()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def boto3_client(args):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        verify=not args.insecure,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def transfer_boto3(args, path):
    from boto3.s3.transfer import TransferConfig

    client = boto3_client(args)
    config = TransferConfig(max_bandwidth=args.max_bandwidth) if args.max_bandwidth else TransferConfig()
    start = time.perf_counter()
    if args.mode == "put":
        client.upload_file(path, args.bucket, args.key, Config=config)
    else:
        client.download_file(args.bucket, args.key, path, Config=config)
    return time.perf_counter() - start


def transfer_awscli(args, path, directory):
    config = os.path.join(directory, "aws-config")
    with open(config, "w") as out:
        out.write("[default]\nregion = us-east-1\n")
        if args.max_bandwidth:
            # aws-cli takes a rate only with a (binary) unit: KB/s is 1024 B/s.
            out.write(f"s3 =\n  max_bandwidth = {round(args.max_bandwidth / 1024)}KB/s\n")
    os.environ["AWS_CONFIG_FILE"] = config
    from awscli.clidriver import create_clidriver

    driver = create_clidriver()
    url = f"s3://{args.bucket}/{args.key}"
    command = ["s3", "cp", "--only-show-errors", "--endpoint-url", args.endpoint]
    if args.insecure:
        command.append("--no-verify-ssl")
    command += [path, url] if args.mode == "put" else [url, path]
    start = time.perf_counter()
    status = driver.main(command)
    elapsed = time.perf_counter() - start
    if status != 0:
        sys.exit(f"aws {' '.join(command)} exited {status}")
    return elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["put", "get"])
    parser.add_argument("key")
    parser.add_argument("--client", choices=["boto3", "awscli"], default="boto3")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", default="hostwatch-test")
    parser.add_argument("--size", type=int, default=32 << 20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-bandwidth", type=float, default=0)
    parser.add_argument("--insecure", action="store_true", help="accept the server's self-signed certificate")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if args.insecure:
        import urllib3

        urllib3.disable_warnings()

    with tempfile.TemporaryDirectory(prefix="hostwatch-s3-") as directory:
        if args.mode == "put":
            path, sha256 = data_file(directory, args.size, args.seed)
            client = boto3_client(args)
            try:
                client.create_bucket(Bucket=args.bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
        else:
            path = os.path.join(directory, "downloaded")
        if args.client == "boto3":
            seconds = transfer_boto3(args, path)
        else:
            seconds = transfer_awscli(args, path, directory)
        size = os.path.getsize(path)
        if args.mode == "get":
            sha256 = sha256_of(path)
    json.dump({"seconds": seconds, "bytes": size, "sha256": sha256}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
