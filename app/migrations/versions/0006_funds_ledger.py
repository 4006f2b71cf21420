"""funds ledger: append-only entries per transaction and milestone; release and retainage shares

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:05:56.893365
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ledger_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('contract_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('milestone_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('transaction_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('objective_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('amount', sa.Numeric(precision=18, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('round', sa.Integer(), nullable=True),
    sa.Column('actor_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('step', sa.String(length=200), nullable=True),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('reverses_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('release_key', sa.String(length=120), nullable=False),
    sa.Column('idempotency_key', sa.String(length=80), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['actor_id'], ['users.id'], name=op.f('fk_ledger_entries_actor_id_users')),
    sa.ForeignKeyConstraint(['contract_id'], ['contracts.id'], name=op.f('fk_ledger_entries_contract_id_contracts')),
    sa.ForeignKeyConstraint(['instance_id'], ['workflow_instances.id'], name=op.f('fk_ledger_entries_instance_id_workflow_instances')),
    sa.ForeignKeyConstraint(['milestone_id'], ['milestones.id'], name=op.f('fk_ledger_entries_milestone_id_milestones')),
    sa.ForeignKeyConstraint(['objective_id'], ['objectives.id'], name=op.f('fk_ledger_entries_objective_id_objectives')),
    sa.ForeignKeyConstraint(['reverses_id'], ['ledger_entries.id'], name=op.f('fk_ledger_entries_reverses_id_ledger_entries')),
    sa.ForeignKeyConstraint(['transaction_id'], ['contract_transactions.id'], name=op.f('fk_ledger_entries_transaction_id_contract_transactions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_ledger_entries_idempotency_key')),
    sa.UniqueConstraint('release_key', name=op.f('uq_ledger_entries_release_key'))
    )
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_entries_contract', ['contract_id', 'id'], unique=False)
        batch_op.create_index('ix_ledger_entries_milestone', ['milestone_id', 'id'], unique=False)
        batch_op.create_index('ix_ledger_entries_transaction', ['transaction_id', 'id'], unique=False)

    # The ledger is append-only in the database itself, not only by convention: an UPDATE is refused on
    # both backends, a DELETE on PostgreSQL (TRUNCATE, a schema-level reset, stays possible).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'ledger entries are append-only (% refused)', TG_OP; END $$""")
        op.execute("CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries "
                   "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()")
    else:
        op.execute("CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries "
                   "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only (UPDATE refused)'); END")

    with op.batch_alter_table('milestones', schema=None) as batch_op:
        batch_op.add_column(sa.Column('release_percentage', sa.Numeric(precision=7, scale=4), nullable=True))
        batch_op.add_column(sa.Column('retainage_percentage', sa.Numeric(precision=7, scale=4), nullable=True))
        batch_op.add_column(sa.Column('retention_of_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_milestones_retention_of_id_milestones'), 'milestones', ['retention_of_id'], ['id'])



def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION IF EXISTS ledger_entries_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_no_update")
    with op.batch_alter_table('milestones', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_milestones_retention_of_id_milestones'), type_='foreignkey')
        batch_op.drop_column('retention_of_id')
        batch_op.drop_column('retainage_percentage')
        batch_op.drop_column('release_percentage')

    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_entries_transaction')
        batch_op.drop_index('ix_ledger_entries_milestone')
        batch_op.drop_index('ix_ledger_entries_contract')

    op.drop_table('ledger_entries')
