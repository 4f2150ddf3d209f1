"""Amazon Web Services drivers: the SQS broker and the DynamoDB result backend (aiobotocore)."""
