#!/usr/bin/env bash
# herd fetch against the AWS CLI on the same S3 server and the same file, and CRC64NVME speed.
#
#   bash bench/fetch-s3.sh [SIZE_MIB] [ROUNDS]        (defaults: 1024 MiB, 3 rounds)
#
# Starts SeaweedFS on loopback (scripts/start-seaweedfs.sh), installs awscli from PyPI into a
# venv under /var/tmp/herd-services, builds herd in release, writes a file of SIZE_MIB MiB of
# random bytes, then for each round uploads it and downloads it with `herd fetch copy` and with
# `aws s3 cp` (alternating which goes first), each to its own key. Prints the median MiB/s of
# each direction and tool, the CRC64NVME GiB/s of one core, and writes the figures as JSON to
# bench/results/fetch-s3.json. Checks that every download is byte-identical to the file.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-1024}
rounds=${2:-3}
services=${HERD_SERVICES_DIR:-/var/tmp/herd-services}
awscli_version=1.46.2

eval "$(bash scripts/start-seaweedfs.sh)"

# shellcheck source=../scripts/lib/services.sh
source scripts/lib/services.sh fetch-s3

venv="$services/awscli/venv"
if [[ "$(venv_version "$venv" awscli || true)" != "$awscli_version" ]]; then
  venv_install "$venv" "awscli==$awscli_version"
fi

cargo build --release --locked -p herd-launch --bin herd -p herd-fetch --example crc64nvme_speed >&2
herd=target/release/herd

work=$(mktemp -d /var/tmp/herd-fetch-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
file="$work/data.bin"
echo "writing $size_mib MiB of random bytes" >&2
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$file"

# Both tools read the same credentials and endpoint; path-style addressing for SeaweedFS.
export AWS_ACCESS_KEY_ID=$HERD_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$HERD_TEST_S3_SECRET_KEY
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$HERD_TEST_S3_ENDPOINT
export AWS_CONFIG_FILE="$work/aws-config" AWS_SHARED_CREDENTIALS_FILE="$work/aws-credentials"
printf '[default]\ns3 =\n    addressing_style = path\n' >"$AWS_CONFIG_FILE"
: >"$AWS_SHARED_CREDENTIALS_FILE"
aws=("$venv/bin/aws" --endpoint-url "$HERD_TEST_S3_ENDPOINT")

bucket="herd-fetch-bench-$$"
"${aws[@]}" s3 mb "s3://$bucket" >/dev/null

seconds() { # runs "$@", prints its wall time in seconds
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  awk -v start="$start" -v end="$end" 'BEGIN { print end - start }'
}

same() { cmp -s "$file" "$1" || { echo "the download $1 differs from the file" >&2; exit 1; }; }

declare -A times
for round in $(seq 1 "$rounds"); do
  order=(herd aws)
  ((round % 2 == 0)) && order=(aws herd)
  for tool in "${order[@]}"; do
    key="s3://$bucket/$tool-$round.bin"
    down="$work/down-$tool-$round.bin"
    if [[ $tool == herd ]]; then
      up_time=$(seconds "$herd" fetch copy "$file" "$key")
      down_time=$(seconds "$herd" fetch copy "$key" "$down")
    else
      up_time=$(seconds "${aws[@]}" s3 cp --only-show-errors "$file" "$key")
      down_time=$(seconds "${aws[@]}" s3 cp --only-show-errors "$key" "$down")
    fi
    same "$down"
    rm -f "$down"
    times[$tool-up]+="$up_time "
    times[$tool-down]+="$down_time "
    printf 'round %d %-4s up %6.2fs down %6.2fs\n' "$round" "$tool" "$up_time" "$down_time" >&2
  done
done
"${aws[@]}" s3 rb --force "s3://$bucket" >/dev/null

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate() { awk -v size="$size_mib" -v seconds="$1" 'BEGIN { print size / seconds }'; }
crc_json=$(target/release/examples/crc64nvme_speed 5 | tail -1)
crc_cache=$(echo "$crc_json" | sed 's/.*in_cache_gib_per_s": \([0-9.]*\).*/\1/')
crc_memory=$(echo "$crc_json" | sed 's/.*from_memory_gib_per_s": \([0-9.]*\).*/\1/')

mkdir -p bench/results
{
  printf '{"size_mib": %d, "rounds": %d, "awscli": "%s",' "$size_mib" "$rounds" "$awscli_version"
  for measure in herd-up herd-down aws-up aws-down; do
    m=$(echo "${times[$measure]}" | median)
    printf ' "%s_mib_per_s": %.1f,' "${measure//-/_}" "$(rate "$m")"
  done
  printf ' "crc64nvme_in_cache_gib_per_s": %s, "crc64nvme_from_memory_gib_per_s": %s}\n' "$crc_cache" "$crc_memory"
} >bench/results/fetch-s3.json

echo
printf '%-28s %12s %12s\n' "$size_mib MiB, median of $rounds" "herd fetch" "aws s3 cp"
for direction in up down; do
  h=$(echo "${times[herd-$direction]}" | median)
  a=$(echo "${times[aws-$direction]}" | median)
  label=$([[ $direction == up ]] && echo "upload (MiB/s)" || echo "download (MiB/s)")
  printf '%-28s %12.0f %12.0f\n' "$label" "$(rate "$h")" "$(rate "$a")"
done
printf '%-28s %12s   (%s from memory)\n' "CRC64NVME, one core (GiB/s)" "$crc_cache" "$crc_memory"
echo "figures written to bench/results/fetch-s3.json" >&2
