# Test-only PostgreSQL image from Debian's packages, for `make compose-test` where no
# registry is reachable. It honours what docker-compose.yml gives the official image:
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and a volume at /var/lib/postgresql/data.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql-15 postgresql-client-15 && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
EXPOSE 5432
CMD ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
