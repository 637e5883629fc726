# Shell helpers shared by the recipes (recipes/*/run.sh) and bin/demo.sh. Source it after setting the
# option defaults and the `options` array:
#
#   stage=0; nj=2; corpus=""                 # defaults: one variable per option
#   options=(stage nj corpus)                # which variables --stage, --nj, --corpus may set
#   . "$(dirname "$0")/../../bin/common.sh"
#   parse_options "$@"
#
# What it provides:
#   parse_options "$@"   --name value / --name=value for every variable in `options` (dashes in the
#                        option, underscores in the variable); a value must match its default's kind
#                        (a default of 3 takes whole numbers, 1.5 any number, true/false true or
#                        false); --help prints the calling script's header comment and the current
#                        values.
#   log MSG...           a timestamped line on stderr; die MSG... logs and exits 1.
#   run CMD...           logs the command line (shell-quoted), then runs it.
#   stage_selected N     true when --stage <= N <= --stop-stage.
#   begin_stage N TITLE DIR SIGNATURE [resumable]
#                        decides whether stage N, whose outputs are all in DIR, runs. False (skip) when
#                        N is not selected, or DIR/.done exists and records the same SIGNATURE (a text
#                        of the settings and upstream stamps the outputs depend on). Otherwise it
#                        empties DIR and returns true. A `resumable` stage (its commands resume, like
#                        training) keeps DIR after a crash with the same SIGNATURE, and a DIR without
#                        markers (work started by hand). --force true always empties DIR and reruns a
#                        selected stage.
#   end_stage DIR        writes DIR/.done (the stage's last act, after validating its outputs).
#   stamp DIR            the id of DIR/.done, for the signature of the stages that use DIR's output:
#                        a stage redone upstream makes the stages downstream of it stale.
#   need_done DIR WHAT   dies unless DIR/.done exists (an earlier stage that was not selected).
#   need_files FILE...   dies unless each FILE exists and is not empty (output validation).
#   pretrain_stage ...   a recipe's pretraining stage, or its --init (below).
#   decode_model ...     greedy and LM decoding of a fine-tuned model, with LM weight tuning (below).
#
# W2VTK is the w2vtk command (default: this repository's .venv/bin/w2vtk) and W2VTK_PYTHON the Python
# that has w2vtk installed (default: .venv/bin/python), so recipes run from any directory.
# LC_ALL=C keeps sorting byte-wise; PYTHONUNBUFFERED=1 keeps Python's logs in order.

export LC_ALL=C
export PYTHONUNBUFFERED=1

W2VTK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W2VTK=${W2VTK:-$W2VTK_ROOT/.venv/bin/w2vtk}
W2VTK_PYTHON=${W2VTK_PYTHON:-$W2VTK_ROOT/.venv/bin/python}  # local/*.py helpers, reading JSON
_script_name=$(basename "$(cd "$(dirname "$0")" && pwd)")/$(basename "$0")

log() {
  printf '%s [%s] %s\n' "$(date '+%F %T')" "$_script_name" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

run() {
  log "\$ $(printf '%q ' "$@")"
  "$@"
}

# A w2vtk subcommand, through $W2VTK.
w2vtk() {
  [ -x "$W2VTK" ] || die "w2vtk not found at $W2VTK: run 'bash bin/setup.sh' in $W2VTK_ROOT, or set W2VTK"
  run "$W2VTK" "$@"
}

_usage() {
  # The calling script's header: the comment block after the shebang line.
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  echo
  echo "Current values:"
  local name
  for name in "${options[@]}"; do
    printf '  --%-16s %s\n' "${name//_/-}" "${!name}"
  done
}

_is_option() {
  local name
  for name in "${options[@]}"; do
    [ "$name" = "$1" ] && return 0
  done
  return 1
}

# Checks VALUE against the kind of the option's default value.
_check_value() {
  local flag=$1 default=$2 value=$3
  case $default in
    true|false)
      [[ $value == true || $value == false ]] || die "$flag takes true or false, not '$value'" ;;
    *)
      if [[ $default =~ ^[0-9]+$ ]] && ! [[ $value =~ ^[0-9]+$ ]]; then
        die "$flag takes a whole number, not '$value'"
      fi
      if [[ $default =~ ^[0-9]*\.[0-9]+$ ]] && ! [[ $value =~ ^[0-9]*\.?[0-9]+$ ]]; then
        die "$flag takes a number, not '$value'"
      fi ;;
  esac
}

parse_options() {
  declare -p options >/dev/null 2>&1 || die "parse_options: the script sets no 'options' array"
  local flag name value command_line
  command_line=$(printf '%q ' "$0" "$@")
  while [ $# -gt 0 ]; do
    case $1 in
      -h|--help) _usage; exit 0 ;;
      --*=*) flag=${1%%=*}; value=${1#*=}; shift ;;
      --*)
        flag=$1
        [ $# -ge 2 ] || die "$flag needs a value (see --help)"
        value=$2; shift 2 ;;
      *) die "unexpected argument '$1': options are --name value (see --help)" ;;
    esac
    name=${flag#--}; name=${name//-/_}
    _is_option "$name" || die "unknown option $flag (see --help)"
    _check_value "$flag" "${!name}" "$value"
    printf -v "$name" '%s' "$value"
  done
  log "$command_line"
}

stage_selected() {
  [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]
}

# Absolute path of a file or folder that may not exist yet (for signatures and messages).
abspath() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/${1#./}" ;;
  esac
}

begin_stage() {
  local n=$1 title=$2 dir=$3 signature=$4 resumable=${5:-}
  [[ -n $dir && $dir != / ]] || die "begin_stage $n: no output folder"
  stage_selected "$n" || return 1
  if [ -f "$dir/.done" ] && [ "${force:-false}" != true ]; then
    if [ "$(grep -v '^id=' "$dir/.done")" = "$signature" ]; then
      log "Stage $n: $title: done already ($dir/.done); --force true redoes it"
      return 1
    fi
    log "Stage $n: $title: its inputs or settings changed since it was done; redoing it"
    diff <(grep -v '^id=' "$dir/.done") <(printf '%s\n' "$signature") \
      | sed -n 's/^< /  was: /p; s/^> /  now: /p' >&2 || true
  fi
  # A resumable stage keeps what it finds unless it was forced, is stale, or crashed with other
  # settings; a folder without markers (a run started by hand, e.g. with torchrun) is kept too.
  if [ "$resumable" = resumable ] && [ -d "$dir" ] && [ ! -f "$dir/.done" ] && [ "${force:-false}" != true ] \
     && { [ ! -f "$dir/.running" ] || [ "$(cat "$dir/.running")" = "$signature" ]; }; then
    log "Stage $n: $title (resuming from what is in $dir)"
  else
    rm -rf "$dir"
    log "Stage $n: $title"
  fi
  mkdir -p "$dir"
  printf '%s\n' "$signature" > "$dir/.running"
  return 0
}

end_stage() {
  local dir=$1
  [ -f "$dir/.running" ] || die "end_stage $dir: the stage was not begun"
  # The id changes whenever the stage is redone, so stages that recorded it see they are stale.
  local tmp=$dir/.done.$$.tmp
  { cat "$dir/.running"; printf 'id=%s-%s\n' "$(date +%s)" "$RANDOM$RANDOM"; } > "$tmp"
  mv -f "$tmp" "$dir/.done"
  rm -f "$dir/.running"
}

# A file named by its path and its content, so that editing a config redoes the stages that used it.
file_id() {
  printf '%s %s\n' "$1" "$(sha256sum < "$1" | cut -c1-16)"
}

stamp() {
  [ -f "$1/.done" ] || { echo "not-done"; return 0; }
  grep '^id=' "$1/.done" || echo "no-id"
}

need_done() {
  [ -f "$1/.done" ] || die "$2 is missing ($1/.done): run its stage first (see --stage)"
}

need_files() {
  local f
  for f in "$@"; do
    [ -s "$f" ] || die "expected output $f is missing or empty"
  done
}

# ---------------------------------------------------------------- pretraining (both recipes' stage 3)
# pretrain_stage N TRAIN_SUBSET VALID_SUBSET DESCRIPTION
#   Stage N: `w2vtk pretrain` with $pretrain_conf on the manifests in $manifests into $pretrain_dir, with
#   the recipe's $pretrain_updates, `pretrain_overrides` array and $seed (default 1); skipped when the recipe's $init names
#   a model to fine-tune instead. Sets init_ckpt (the checkpoint fine-tuning starts from) and init_id
#   (its stamp, for the fine-tuning stage's signature).
pretrain_stage() {
  local n=$1 train_subset=$2 valid_subset=$3 what=$4 sig
  if [ -n "$init" ]; then
    stage_selected "$n" && log "Stage $n: pretrain: skipped, fine-tuning starts from --init $init"
    init_ckpt=$init
    init_id="init=$(abspath "$init")"
    return 0
  fi
  stage_selected "$n" && need_done "$manifests" "stage 1's manifests"
  sig="conf=$(file_id "$pretrain_conf")"$'\n'"updates=$pretrain_updates"$'\n'"args=$pretrain_args"$'\n'"seed=${seed:-1}"
  sig+=$'\n'"data=$(stamp "$manifests")"
  if begin_stage "$n" "pretrain ($conf) on $what" "$pretrain_dir" "$sig" resumable; then
    w2vtk --seed "${seed:-1}" pretrain --config "$pretrain_conf" --data "$manifests" --train-subset "$train_subset" \
      --valid-subset "$valid_subset" --exp-dir "$pretrain_dir" ${pretrain_updates:+--max-updates "$pretrain_updates"} \
      ${pretrain_overrides[@]+"${pretrain_overrides[@]}"}
    need_files "$pretrain_dir/checkpoints/best.pt" "$pretrain_dir/checkpoints/last.pt" "$pretrain_dir/log.jsonl"
    end_stage "$pretrain_dir"
  fi
  init_ckpt=$pretrain_dir/checkpoints/best.pt
  init_id="pretrain=$(stamp "$pretrain_dir")"
}

# ---------------------------------------------------------------- decoding (both recipes' decode stage)
# decode_model CKPT DATA OUT LM_NAME TUNE_SUBSET SUBSET...
#   Decodes each SUBSET of the manifests in DATA with the fine-tuned CKPT: greedily into
#   OUT/<subset>/greedy, then, after `w2vtk tune-lm` found the LM weight and word score on TUNE_SUBSET
#   (OUT/lm_weights.json), with the LM into OUT/<subset>/LM_NAME. The arrays `lm_options` (--decoder,
#   --lm, --lexicon, --beam ...) and `tune_options` (--trials ...) and $nj configure it. The acoustic
#   model runs once per subset: its log-probabilities are cached in OUT/logprobs. Each decoding ends
#   with its own .done, so an interrupted stage resumes where it stopped.
decode_model() {
  local ckpt=$1 data=$2 out=$3 lm_name=$4 tune_subset=$5 subset lm_weight word_score
  shift 5
  local common=(--checkpoint "$ckpt" --data "$data" --cache-dir "$out/logprobs" --jobs "$nj")
  for subset in "$@"; do
    _decode_once "$out/$subset/greedy" "${common[@]}" --subset "$subset"
  done
  if [ ! -s "$out/lm_weights.json" ]; then
    w2vtk tune-lm "${common[@]}" --subset "$tune_subset" --out "$out/lm_weights.json" \
      "${lm_options[@]}" ${tune_options[@]+"${tune_options[@]}"}
    need_files "$out/lm_weights.json"
  fi
  read -r lm_weight word_score < <("$W2VTK_PYTHON" -c \
    'import json, sys; w = json.load(open(sys.argv[1])); print(w["lm_weight"], w["word_score"])' "$out/lm_weights.json")
  log "LM weight $lm_weight, word score $word_score (tuned on $tune_subset)"
  for subset in "$@"; do
    _decode_once "$out/$subset/$lm_name" "${common[@]}" --subset "$subset" "${lm_options[@]}" \
      --lm-weight "$lm_weight" --word-score "$word_score"
  done
}

_decode_once() {  # OUT ARGS...: one `w2vtk decode`, skipped when OUT/.done exists
  local out=$1
  shift
  [ -f "$out/.done" ] && return 0
  rm -rf "$out"
  w2vtk decode --out "$out" "$@"
  need_files "$out/wer.json" "$out/hyp.trn" "$out/ref.trn"
  touch "$out/.done"
}
