#!/usr/bin/env bash
# Regenerates the LUKS1 known-answer vectors in this folder with cryptsetup (2.6 on Debian
# 12), and vectors.json, which records each one's passphrase and master key. Each vector is
# the header area of a LUKS1 image (the bytes before its payload offset), gzipped: the
# 592-byte header and keyslot 0's key material. cryptsetup fills the unused keyslot areas with
# random bytes; the vectors have zeros there (after keyslot 0's material), which keeps them
# small and changes nothing a reader looks at.
# Usage: bash testdata/luks1/make-vectors.sh   (needs cryptsetup-bin; no root or device-mapper)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v cryptsetup >/dev/null || { echo "make-vectors: cryptsetup not found (apt-get install cryptsetup-bin)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
manifest=()

# make NAME UUID HASH KEYBITS PASSPHRASE
make() {
	local name=$1 uuid=$2 hash=$3 bits=$4 pass=$5
	truncate -s $(( (2 << 20) + (64 << 10) )) "$tmp/$name.img"
	head -c $((bits / 8)) /dev/urandom > "$tmp/$name.vk"
	printf '%s' "$pass" > "$tmp/$name.pass"
	cryptsetup luksFormat --batch-mode --type luks1 --uuid "$uuid" \
		--cipher aes-xts-plain64 --key-size "$bits" --hash "$hash" --pbkdf-force-iterations 1000 \
		--volume-key-file "$tmp/$name.vk" --key-file "$tmp/$name.pass" "$tmp/$name.img"
	local payload
	payload=$(cryptsetup luksDump "$tmp/$name.img" | awk '/^Payload offset:/ {print $3}')
	local end=$(( 4096 + bits / 8 * 4000 ))
	{ head -c "$end" "$tmp/$name.img"; head -c $((payload * 512 - end)) /dev/zero; } | gzip -9n > "$name.hdr.gz"
	manifest+=("$(printf '  {"file": "%s.hdr.gz", "hash": "%s", "key_bytes": %d, "payload_offset": %d, "uuid": "%s", "passphrase": "%s", "master_key": "%s"}' \
		"$name" "$hash" $((bits / 8)) "$payload" "$uuid" "$pass" "$(od -An -v -tx1 "$tmp/$name.vk" | tr -d ' \n')")")
}

make sha1-aes256 5e1f7c2a-1b3d-4c5e-8f90-a1b2c3d4e5f1 sha1 256 'luks1 sha1 vector'
make sha256-aes512 5e1f7c2a-1b3d-4c5e-8f90-a1b2c3d4e5f2 sha256 512 'luks1 sha256 vector'

{
	echo '['
	for i in "${!manifest[@]}"; do
		if (( i + 1 < ${#manifest[@]} )); then echo "${manifest[$i]},"; else echo "${manifest[$i]}"; fi
	done
	echo ']'
} > vectors.json
