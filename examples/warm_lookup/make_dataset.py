"""Make the example's dataset: a CSV of sales, uploaded to the S3 server the workers read.

    python examples/warm_lookup/make_dataset.py [--rows 200000]   # prints the dataset URL

Reads MEMRUN_S3_ENDPOINT_URL, AWS_* and MEMRUN_S3_BUCKET (`scripts/services env` sets them).
"""

import argparse
import io
import os
import random

import boto3
from botocore.config import Config


def make_csv(rows: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    out = io.StringIO()
    out.write("order_id,region,amount,quantity\n")
    regions = ["north", "south", "east", "west"]
    for order in range(rows):
        out.write(f"{order},{rng.choice(regions)},{rng.uniform(1, 500):.2f},{rng.randint(1, 9)}\n")
    return out.getvalue().encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--key", default="examples/sales.csv")
    args = parser.parse_args()
    bucket = os.environ.get("MEMRUN_S3_BUCKET", "memrun")
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ.get("MEMRUN_S3_ENDPOINT_URL"),
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.put_object(Bucket=bucket, Key=args.key, Body=make_csv(args.rows))
    print(f"s3://{bucket}/{args.key}")


if __name__ == "__main__":
    main()
