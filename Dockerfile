# One image for every Strata process: the compose file picks the command
# (master, regional, worker) and the settings (STRATA_* variables).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin strata

COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

USER strata
WORKDIR /home/strata
ENTRYPOINT ["strata"]
CMD ["--help"]
