#!/usr/bin/env bash
# One entry point for people and CI:
#   ./tasks.sh test [pytest args]          the whole suite (CI runs this)
#   ./tasks.sh repro [targets] [-f] [-j N] the default profile (params.yaml) here, N stages at a time
#   ./tasks.sh profile NAME [same args]    params.NAME.yaml in profiles/NAME/, params.yaml untouched
#   ./tasks.sh setup
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

setup() {
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    local stamp=.venv/.installed
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
        .venv/bin/python -m pip install --quiet --upgrade pip
        # The constraints file pins every tested version (torch 2.14.1 included); nothing newer is pulled in.
        .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
        touch "$stamp"
    fi
}

fashion_mnist() {
    # Debian ships Fashion-MNIST; install it when missing and apt is usable (the default profile needs it).
    if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
    fi
}

postgres() {
    # The tuning tests start a throwaway PostgreSQL server (scripts/postgres_for_tests.sh) when one is installed.
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
    fi
}

chromium_for_tests() {
    # tests/test_browser.py (and the e2e report check) render pages in headless Chromium when one is installed.
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    fi
}

case "${1:-}" in
    setup) setup ;;
    test)
        shift
        setup
        postgres
        chromium_for_tests
        .venv/bin/python -m pytest "$@"   # the whole suite; -m "not slow" skips the end-to-end runs
        ;;
    repro)
        shift
        setup
        fashion_mnist
        # Without git (a plain copy or tarball), DVC runs without SCM: `dvc repro` needs none.
        if [ ! -e .git ] && [ "$(.venv/bin/dvc config --local core.no_scm 2>/dev/null)" != true ]; then
            .venv/bin/dvc config --local core.no_scm true
        fi
        # `dvc repro`, one stage per core at a time (pipeline/repro.py; -j 1: one after another)
        PATH="$PWD/.venv/bin:$PATH" python -m pipeline.repro "$@"
        ;;
    profile)
        # Another profile runs in a workspace of its own (profiles/NAME: this checkout's code, the profile
        # as its params.yaml, DVC's cache shared), tracked in this project's MLflow store with a profile tag.
        name=${2:?usage: ./tasks.sh profile NAME [targets] [-f] [-j N]}
        shift 2
        [ -f "params.$name.yaml" ] || { echo "no params.$name.yaml (profiles: $(ls params.*.yaml))" >&2; exit 2; }
        setup
        fashion_mnist
        .venv/bin/python -m pipeline.params "params.$name.yaml" >/dev/null || {
            .venv/bin/python -m pipeline.params "params.$name.yaml"; exit 2; }
        ws="profiles/$name"
        mkdir -p "$ws"
        rm -rf "$ws/pipeline" "$ws/stages" "$ws/ttfs"
        cp -r pipeline stages ttfs dvc.yaml .dvcignore params.schema.json "$ws/"
        cp "params.$name.yaml" "$ws/params.yaml"
        if [ ! -d "$ws/.dvc" ]; then
            (cd "$ws" && "$OLDPWD/.venv/bin/dvc" init -q --no-scm)
        fi
        (cd "$ws" && "$OLDPWD/.venv/bin/dvc" config --local cache.dir "$OLDPWD/.dvc/cache" &&
            "$OLDPWD/.venv/bin/dvc" config --local plots.html_template ../pipeline/vega/offline.html)
        export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db} TTFS_PROFILE=$name
        cd "$ws" && PATH="$OLDPWD/.venv/bin:$PATH" python -m pipeline.repro "$@"
        ;;
    *)
        echo "usage: ./tasks.sh {setup|test [pytest args]|repro [targets] [-f] [-j N]|profile NAME [targets] [-f] [-j N]}" >&2
        exit 2
        ;;
esac
