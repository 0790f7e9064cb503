"""An unmodified program that dies of an uncaught exception."""


def deep() -> None:
    raise ValueError("planted failure in the target")


if __name__ == "__main__":
    deep()
