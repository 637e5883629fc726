#!/usr/bin/env bash
# Installs everything w2vtk needs on a fresh Debian machine, idempotently:
#   - Debian packages: espeak-ng, sox, sctk, bible-kjv and dict-devil (public-domain texts for the
#     synthetic corpora), cmake, boost (for KenLM's lmplz/build_binary);
#   - a Python environment with the pinned requirements, cached outside the clone under
#     $W2VTK_CACHE (default ~/.cache/w2vtk), keyed by a hash of requirements.txt and this script;
#   - KenLM's lmplz and build_binary, built from the kenlm source package into that environment;
#   - w2vtk itself, editable, with .venv in the repository root linking to the environment.
# A second run does no work beyond a few checks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { printf '%s [setup] %s\n' "$(date '+%F %T')" "$*" >&2; }

apt_pkgs=(espeak-ng sox sctk bible-kjv dict-devil cmake g++ zlib1g-dev libbz2-dev liblzma-dev
          libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cache=${W2VTK_CACHE:-$HOME/.cache/w2vtk}
# Bump when build_env changes in a way that needs a new environment.
env_recipe="venv+requirements+kenlm-tools v1"
key=$( { cat requirements.txt; echo "$env_recipe"; } | sha256sum | cut -c1-16)
env_dir="$cache/env-$key"
mkdir -p "$cache"

build_env() {
  # A venv's scripts hold absolute paths, so it is built in place and marked complete last.
  rm -rf "$env_dir"
  log "creating Python environment $env_dir (about 5 minutes)"
  python3 -m venv "$env_dir"
  # pip warns about every package the machine's extra local indexes lack; those lines are noise.
  "$env_dir/bin/pip" install -q --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
  "$env_dir/bin/pip" install -q --no-binary kenlm -r requirements.txt 2> >(grep -v "^WARNING: Location" >&2)
  log "building KenLM's lmplz and build_binary"
  local src; src=$(mktemp -d)
  # Only kenlm as source: with --no-binary :all: pip would also build the backend's own build
  # requirements (cmake among them) from source just to read kenlm's metadata, for a quarter of an hour.
  "$env_dir/bin/pip" download -q --no-deps --no-binary kenlm -d "$src" "$(grep -E '^kenlm==' requirements.txt)" \
    2> >(grep -v "^WARNING: Location" >&2)
  tar -xzf "$src"/kenlm-*.tar.gz -C "$src"
  # The compiler's deprecation warnings are kept out of the way; the log is shown if the build fails.
  if ! { cmake -S "$src"/kenlm-*/ -B "$src/build" -DCMAKE_BUILD_TYPE=Release &&
         cmake --build "$src/build" --target lmplz build_binary -j "$(nproc)"; } >"$src/build.log" 2>&1; then
    tail -n 50 "$src/build.log" >&2
    log "building lmplz/build_binary failed (full log: $src/build.log)"
    exit 1
  fi
  cp "$src/build/bin/lmplz" "$src/build/bin/build_binary" "$env_dir/bin/"
  rm -rf "$src"
  touch "$env_dir/.complete"
}

(
  flock 9
  [ -f "$env_dir/.complete" ] || build_env
) 9>"$cache/.lock"

if [ "$(readlink .venv 2>/dev/null)" != "$env_dir" ]; then
  rm -rf .venv
  ln -s "$env_dir" .venv
fi

# The environment may be shared by several clones; point the editable install at this one.
installed_from=$(.venv/bin/python -c 'import w2vtk, os; print(os.path.dirname(os.path.dirname(w2vtk.__file__)))' 2>/dev/null || true)
if [ "$installed_from" != "$root" ] || [ ! -x .venv/bin/w2vtk ]; then
  log "installing w2vtk (editable) from $root"
  .venv/bin/pip install -q --no-deps --no-build-isolation -e . >/dev/null
fi
