"""Milestone domain: contacts, objectives, questions, answers, evidence, transactions, lifecycle

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:28:14.605385
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('contacts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('phone', sa.String(length=50), nullable=True),
    sa.Column('role', sa.String(length=120), nullable=True),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_contacts_account_id_accounts')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_contacts_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contacts')),
    sa.UniqueConstraint('account_id', 'email', name='uq_contacts_account_email')
    )
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contacts_account_id'), ['account_id'], unique=False)

    op.create_table('objectives',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('milestone_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('required', sa.Boolean(), nullable=False),
    sa.Column('evidence_required', sa.Boolean(), nullable=False),
    sa.Column('met', sa.Boolean(), nullable=False),
    sa.Column('met_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('met_by_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_objectives_created_by_id_users')),
    sa.ForeignKeyConstraint(['met_by_id'], ['users.id'], name=op.f('fk_objectives_met_by_id_users')),
    sa.ForeignKeyConstraint(['milestone_id'], ['milestones.id'], name=op.f('fk_objectives_milestone_id_milestones')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_objectives')),
    sa.UniqueConstraint('milestone_id', 'position', name='uq_objectives_milestone_position')
    )
    with op.batch_alter_table('objectives', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_objectives_milestone_id'), ['milestone_id'], unique=False)

    op.create_table('contract_transactions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('contract_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('amount', sa.Numeric(precision=18, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('external_ref', sa.String(length=200), nullable=True),
    sa.Column('occurred_on', sa.Date(), nullable=False),
    sa.Column('milestone_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('objective_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['contract_id'], ['contracts.id'], name=op.f('fk_contract_transactions_contract_id_contracts')),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_contract_transactions_created_by_id_users')),
    sa.ForeignKeyConstraint(['milestone_id'], ['milestones.id'], name=op.f('fk_contract_transactions_milestone_id_milestones')),
    sa.ForeignKeyConstraint(['objective_id'], ['objectives.id'], name=op.f('fk_contract_transactions_objective_id_objectives')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contract_transactions'))
    )
    with op.batch_alter_table('contract_transactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contract_transactions_contract_id'), ['contract_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_contract_transactions_milestone_id'), ['milestone_id'], unique=False)

    op.create_table('evidence_files',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('objective_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('milestone_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('storage_key', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('uploaded_by_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('uploaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['milestone_id'], ['milestones.id'], name=op.f('fk_evidence_files_milestone_id_milestones')),
    sa.ForeignKeyConstraint(['objective_id'], ['objectives.id'], name=op.f('fk_evidence_files_objective_id_objectives')),
    sa.ForeignKeyConstraint(['uploaded_by_id'], ['users.id'], name=op.f('fk_evidence_files_uploaded_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_files')),
    sa.UniqueConstraint('storage_key', name=op.f('uq_evidence_files_storage_key'))
    )
    with op.batch_alter_table('evidence_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evidence_files_milestone_id'), ['milestone_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evidence_files_objective_id'), ['objective_id'], unique=False)

    op.create_table('questions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('objective_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('answer_type', sa.String(length=20), nullable=False),
    sa.Column('choices', sa.JSON(), nullable=True),
    sa.Column('required', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_questions_created_by_id_users')),
    sa.ForeignKeyConstraint(['objective_id'], ['objectives.id'], name=op.f('fk_questions_objective_id_objectives')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_questions')),
    sa.UniqueConstraint('objective_id', 'position', name='uq_questions_objective_position')
    )
    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_questions_objective_id'), ['objective_id'], unique=False)

    op.create_table('answers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('question_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('answered_by_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['answered_by_id'], ['users.id'], name=op.f('fk_answers_answered_by_id_users')),
    sa.ForeignKeyConstraint(['question_id'], ['questions.id'], name=op.f('fk_answers_question_id_questions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_answers'))
    )
    with op.batch_alter_table('answers', schema=None) as batch_op:
        batch_op.create_index('ix_answers_question_id_id', ['question_id', 'id'], unique=False)

    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('start_date', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('end_date', sa.Date(), nullable=True))

    with op.batch_alter_table('milestones', schema=None) as batch_op:
        batch_op.add_column(sa.Column('percentage', sa.Numeric(precision=7, scale=4), nullable=True))
        batch_op.add_column(sa.Column('external_refs', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('primary_contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('published', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('published_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_milestones_primary_contact_id'), ['primary_contact_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_milestones_primary_contact_id_contacts'), 'contacts', ['primary_contact_id'], ['id'])

    with op.batch_alter_table('workflow_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('waiting_for', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.drop_constraint(batch_op.f('uq_workflow_instances_milestone_round'), type_='unique')
        batch_op.create_unique_constraint('uq_workflow_instances_milestone_round', ['milestone_id', 'process_id', 'round'])



def downgrade() -> None:
    with op.batch_alter_table('workflow_instances', schema=None) as batch_op:
        batch_op.drop_constraint('uq_workflow_instances_milestone_round', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_workflow_instances_milestone_round'), ['milestone_id', 'round'])
        batch_op.drop_column('waiting_for')

    with op.batch_alter_table('milestones', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_milestones_primary_contact_id_contacts'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_milestones_primary_contact_id'))
        batch_op.drop_column('published_at')
        batch_op.drop_column('published')
        batch_op.drop_column('primary_contact_id')
        batch_op.drop_column('external_refs')
        batch_op.drop_column('percentage')

    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.drop_column('end_date')
        batch_op.drop_column('start_date')

    with op.batch_alter_table('answers', schema=None) as batch_op:
        batch_op.drop_index('ix_answers_question_id_id')

    op.drop_table('answers')
    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_questions_objective_id'))

    op.drop_table('questions')
    with op.batch_alter_table('evidence_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evidence_files_objective_id'))
        batch_op.drop_index(batch_op.f('ix_evidence_files_milestone_id'))

    op.drop_table('evidence_files')
    with op.batch_alter_table('contract_transactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contract_transactions_milestone_id'))
        batch_op.drop_index(batch_op.f('ix_contract_transactions_contract_id'))

    op.drop_table('contract_transactions')
    with op.batch_alter_table('objectives', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_objectives_milestone_id'))

    op.drop_table('objectives')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contacts_account_id'))

    op.drop_table('contacts')
