# The pgferry worker (Fargate): Node 22, PostgreSQL's client tools and the pgferry bundle with the AWS
# adapters. The state machine starts it with ecs:runTask.waitForTaskToken; entry point `pgferry worker`.
#   docker build -t pgferry-worker .
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
COPY packages/core/package.json packages/core/
COPY packages/postgres/package.json packages/postgres/
COPY packages/aws/package.json packages/aws/
COPY packages/cli/package.json packages/cli/
# No install scripts: the tests' embedded PostgreSQL servers and the CLI's own bundle are not needed.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY packages ./packages
# One file, with the AWS adapters in it (the CLI's bundle leaves them out). pg and its dependencies
# are CommonJS and call require(): the banner gives the ESM bundle a real one.
RUN npx esbuild packages/cli/src/main.ts --bundle --platform=node --format=esm --target=node22 \
      --external:pg-native --outfile=/out/pgferry.mjs --log-level=warning \
      "--banner:js=import { createRequire as __pgferryRequire } from 'node:module'; const require = __pgferryRequire(import.meta.url);"

FROM ${NODE_IMAGE}
# pg_dump must be at least as new as the source server, so the client comes from PGDG: its
# `postgresql-client` package is the newest major, which dumps every supported source version.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && install -d /usr/share/postgresql-common/pgdg \
 && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc https://www.postgresql.org/media/keys/ACCC4CF8.asc \
 && . /etc/os-release \
 && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && apt-get purge -y curl && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && pg_dump --version && pg_restore --version
COPY --from=build /out/pgferry.mjs /opt/pgferry/pgferry.mjs
# The bundle exports main(); this entry runs it (packages/cli/bin/pgferry.mjs looks for the sources).
RUN printf 'import { main } from "./pgferry.mjs";\nprocess.exitCode = await main(process.argv.slice(2));\n' \
      > /opt/pgferry/bin.mjs \
 && printf '#!/bin/sh\nexec node /opt/pgferry/bin.mjs "$@"\n' > /usr/local/bin/pgferry \
 && chmod 0755 /usr/local/bin/pgferry \
 && install -d -o node -g node /work
# Artifacts (schema and data dumps) are written under the working directory: the task's ephemeral storage.
WORKDIR /work
USER node
ENV NODE_ENV=production
ENTRYPOINT ["pgferry"]
CMD ["worker"]
