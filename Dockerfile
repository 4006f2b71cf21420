FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY workflows ./workflows
COPY bpmn ./bpmn
COPY dmn ./dmn
RUN pip install --no-cache-dir -e .
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "app:create_app()"]
