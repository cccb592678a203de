FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY producers producers
COPY streams streams
COPY api api
COPY tally tally
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["tally", "api", "--api-host", "0.0.0.0"]
