"""The multi-cluster connectivity suite (``meshctl connectivity test --multi-cluster``)."""
